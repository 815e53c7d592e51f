"""git post-receive hook: announce new versions to subscribers (in the background)."""

import os
import sys
from pathlib import Path

from reposerver.githooks import post_receive

if __name__ == "__main__":
    try:
        post_receive(Path(os.environ.get("GIT_DIR", ".")).resolve(), sys.stdin)
    except Exception as exc:  # noqa: BLE001 - the push is already accepted; report only
        print(f"warning: could not announce new versions: {exc}", file=sys.stderr)
