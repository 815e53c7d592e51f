"""git pre-receive hook: refuse a push that breaks the repository's rules."""

import os
import sys
from pathlib import Path

from reposerver.githooks import pre_receive

if __name__ == "__main__":
    status, message = pre_receive(Path(os.environ.get("GIT_DIR", ".")).resolve(), sys.stdin)
    if message:
        print(message, file=sys.stderr)
    sys.exit(status)
