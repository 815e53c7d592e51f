"""Producing signed tag objects that stock git verifies (`git tag -v`).

The signature covers the tag object's bytes without the signature, exactly as `git tag -s`
does: GPG via `gpg --detach-sign --armor -u KEY`, SSH via `ssh-keygen -Y sign -n git -f KEY`
(what git uses with `gpg.format=ssh`). A KEY that names an existing file is an SSH private key;
anything else is a GPG key id.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from reposerver.errors import ToolFailed


def sign_payload(payload: bytes, key: str) -> bytes:
    """Return the armored signature block for `payload` made with `key`."""
    if Path(key).expanduser().is_file():
        with tempfile.TemporaryDirectory(prefix="cv-sign-") as tmp:
            data = Path(tmp) / "tag"
            data.write_bytes(payload)
            result = subprocess.run(
                [
                    "ssh-keygen",
                    "-Y",
                    "sign",
                    "-n",
                    "git",
                    "-f",
                    str(Path(key).expanduser()),
                    str(data),
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise ToolFailed(f"ssh-keygen could not sign with {key}: {result.stderr.strip()}")
            return (Path(tmp) / "tag.sig").read_bytes()
    signed = subprocess.run(
        ["gpg", "--batch", "--no-tty", "--armor", "--detach-sign", "-u", key],
        input=payload,
        capture_output=True,
    )
    if signed.returncode != 0:
        raise ToolFailed(f"gpg could not sign with key {key}: {signed.stderr.decode().strip()}")
    return signed.stdout
