"""Verification of signed version tags against a repository's trusted keys.

A tag's signature is verified here with `gpg` and `ssh-keygen` directly, against only the
repository's trusted keys (a throw-away GnuPG home holding just those keys; the repository's
`allowed_signers`), never with dulwich's `verify_tag`, which accepts an unsigned tag unless key
ids are given. The signed payload is the tag object up to the signature block, as git signs it.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reposerver.errors import SignatureRefused
from reposerver.repo_config import allowed_signers_file, gpg_key_dir

PGP_MARKER = b"-----BEGIN PGP SIGNATURE-----"
SSH_MARKER = b"-----BEGIN SSH SIGNATURE-----"


@dataclass(frozen=True)
class SignatureStatus:
    """Whether a tag carries a signature, who verifiably made it, and why not if nobody."""

    signed: bool
    signer: str | None
    problem: str | None = None


def split_signature(raw: bytes) -> tuple[bytes, bytes | None, str | None]:
    """Split a raw tag object into (signed payload, signature block, "gpg"|"ssh"|None)."""
    for marker, kind in ((PGP_MARKER, "gpg"), (SSH_MARKER, "ssh")):
        if raw.startswith(marker):
            return b"", raw, kind
        index = raw.rfind(b"\n" + marker)
        if index >= 0:
            return raw[: index + 1], raw[index + 1 :], kind
    return raw, None, None


def _verify_gpg(repo_path: Path, payload: bytes, signature: bytes) -> str:
    keys = sorted(gpg_key_dir(repo_path).glob("*.asc"))
    if not keys:
        raise SignatureRefused("tag is GPG-signed but the repository trusts no GPG keys")
    with tempfile.TemporaryDirectory(prefix="cv-gpg-") as home:
        base = ["gpg", "--homedir", home, "--batch", "--no-tty", "--quiet"]
        subprocess.run([*base, "--import", *map(str, keys)], capture_output=True, check=False)
        sig = Path(home) / "tag.sig"
        data = Path(home) / "tag.payload"
        sig.write_bytes(signature)
        data.write_bytes(payload)
        result = subprocess.run(
            [*base, "--status-fd", "1", "--verify", str(sig), str(data)],
            capture_output=True,
            text=True,
        )
    status = {
        line.split()[1]: line.split()[2:]
        for line in result.stdout.splitlines()
        if line.startswith("[GNUPG:] ") and len(line.split()) > 1
    }
    if result.returncode != 0 or "VALIDSIG" not in status or "GOODSIG" not in status:
        if "NO_PUBKEY" in status or "ERRSIG" in status:
            raise SignatureRefused("tag is signed by a GPG key the repository does not trust")
        raise SignatureRefused("tag's GPG signature does not verify")
    for bad in ("EXPKEYSIG", "REVKEYSIG", "EXPSIG"):
        if bad in status:
            raise SignatureRefused(f"tag's GPG signature is not acceptable ({bad})")
    fingerprint = status["VALIDSIG"][-1]
    user = " ".join(status["GOODSIG"][1:])
    return f"{user} (gpg {fingerprint})"


def _verify_ssh(repo_path: Path, payload: bytes, signature: bytes) -> str:
    signers = allowed_signers_file(repo_path)
    if not signers.exists() or not signers.read_text().strip():
        raise SignatureRefused("tag is SSH-signed but the repository trusts no SSH keys")
    with tempfile.TemporaryDirectory(prefix="cv-ssh-") as tmp:
        sig = Path(tmp) / "tag.sig"
        sig.write_bytes(signature)
        found = subprocess.run(
            ["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(signers)],
            capture_output=True,
            text=True,
        )
        principals = found.stdout.split()
        if found.returncode != 0 or not principals:
            raise SignatureRefused("tag is signed by an SSH key the repository does not trust")
        principal = principals[0]
        result = subprocess.run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(signers),
                "-I",
                principal,
                "-n",
                "git",
                "-s",
                str(sig),
            ],
            input=payload,
            capture_output=True,
        )
    if result.returncode != 0:
        raise SignatureRefused("tag's SSH signature does not verify")
    return f"{principal} (ssh)"


def verify(repo_path: Path, raw_tag: bytes) -> SignatureStatus:
    """Check the signature of the raw tag object `raw_tag` against the repository's keys.

    Never raises for a bad signature; the status says what is wrong.
    """
    payload, signature, kind = split_signature(raw_tag)
    if signature is None:
        return SignatureStatus(
            False, None, "tag is not signed (use git tag -s, or cui publish --sign)"
        )
    try:
        check = _verify_gpg if kind == "gpg" else _verify_ssh
        return SignatureStatus(True, check(Path(repo_path), payload, signature))
    except SignatureRefused as exc:
        return SignatureStatus(True, None, str(exc))
