"""Verification of signed version tags against a repository's trusted keys.

A tag's signature is verified here with `gpg` and `ssh-keygen` directly, against only the
repository's trusted keys (a throw-away GnuPG home holding just those keys; the repository's
`allowed_signers`), never with dulwich's `verify_tag`, which accepts an unsigned tag unless key
ids are given. The signed payload is the tag object up to the signature block, found the way
git's `parse_signed_buffer` finds it: the signature starts at the LAST line that begins with a
signature marker of any format (so a message that quotes a PGP armour line, followed by a real
SSH signature, is split at the SSH block, as git splits it).

A signature is bound to one repository and one appliance by trailers in the signed message
(`Collective-Repository: NAME`, `Collective-Appliance: NAME`; `binding` reads them), so a tag
signed for repository A proves nothing when pushed into repository B.
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
_MARKERS = (
    (PGP_MARKER, "gpg"),
    (b"-----BEGIN PGP MESSAGE-----", "gpg"),
    (b"-----BEGIN SIGNED MESSAGE-----", "x509"),
    (SSH_MARKER, "ssh"),
)
"""Every line start git's gpg-interface.c recognises as the beginning of a signature."""
REPOSITORY_TRAILER = "Collective-Repository"
APPLIANCE_TRAILER = "Collective-Appliance"


@dataclass(frozen=True)
class SignatureStatus:
    """Whether a tag carries a signature, who verifiably made it, and why not if nobody."""

    signed: bool
    signer: str | None
    problem: str | None = None


def split_signature(raw: bytes) -> tuple[bytes, bytes | None, str | None]:
    """Split a raw tag object into (signed payload, signature block, "gpg"|"ssh"|"x509"|None).

    Like git's `parse_signed_buffer`: the block starts at the last line beginning with a known
    signature marker, whatever markers earlier lines of the message carry.
    """
    start, kind, pos = len(raw), None, 0
    while pos < len(raw):
        for marker, marker_kind in _MARKERS:
            if raw.startswith(marker, pos):
                start, kind = pos, marker_kind
        end = raw.find(b"\n", pos)
        pos = len(raw) if end < 0 else end + 1
    if kind is None:
        return raw, None, None
    return raw[:start], raw[start:], kind


@dataclass(frozen=True)
class Binding:
    """What a signed tag says it releases: the repository and the appliance it names."""

    repository: str | None
    appliance: str | None


def binding(payload: bytes) -> Binding:
    """The `Collective-Repository` / `Collective-Appliance` trailers of a tag's signed payload.

    Only the message (after the header's blank line) counts; a trailer given twice with
    different values names nothing (None), so an ambiguous tag binds to no repository.
    """
    _, _, message = payload.partition(b"\n\n")
    found: dict[str, set[str]] = {REPOSITORY_TRAILER: set(), APPLIANCE_TRAILER: set()}
    for line in message.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip() in found and value.strip():
            found[key.strip()].add(value.strip())
    repo, appliance = found[REPOSITORY_TRAILER], found[APPLIANCE_TRAILER]
    return Binding(
        next(iter(repo)) if len(repo) == 1 else None,
        next(iter(appliance)) if len(appliance) == 1 else None,
    )


def binding_problem(raw_tag: bytes, repository: str, appliance: str | None) -> str | None:
    """Why the signed tag `raw_tag` does not release `appliance` of `repository` (None if it
    does). `appliance` None skips the appliance check (a caller that has not evaluated it)."""
    payload, _, _ = split_signature(raw_tag)
    bound = binding(payload)
    if bound.repository is None:
        return (
            f"the signed tag names no repository (its message needs the trailer "
            f"'{REPOSITORY_TRAILER}: {repository}')"
        )
    if bound.repository != repository:
        return (
            f"the tag was signed for repository {bound.repository!r}, not {repository!r}: "
            "a signature is bound to its repository"
        )
    if appliance is not None and bound.appliance != appliance:
        named = repr(bound.appliance) if bound.appliance else "no appliance"
        return f"the tag was signed for {named}, not appliance {appliance!r}"
    return None


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


def verify(
    repo_path: Path,
    raw_tag: bytes,
    repository: str | None = None,
    appliance: str | None = None,
) -> SignatureStatus:
    """Check the signature of the raw tag object `raw_tag` against the repository's keys.

    With `repository`, a valid signature counts only when the tag's binding names that
    repository (and `appliance`, when given); otherwise the status has no signer and says why.
    Never raises for a bad signature; the status says what is wrong.
    """
    payload, signature, kind = split_signature(raw_tag)
    if signature is None:
        return SignatureStatus(
            False, None, "tag is not signed (use git tag -s, or cui publish --sign)"
        )
    try:
        if kind == "x509":
            raise SignatureRefused("tag has an X.509 signature; only GPG and SSH are supported")
        check = _verify_gpg if kind == "gpg" else _verify_ssh
        signer = check(Path(repo_path), payload, signature)
    except SignatureRefused as exc:
        return SignatureStatus(True, None, str(exc))
    if repository is not None:
        problem = binding_problem(raw_tag, repository, appliance)
        if problem is not None:
            return SignatureStatus(True, None, problem)
    return SignatureStatus(True, signer)
