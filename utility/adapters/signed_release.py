"""A repository version the utility verified itself, from the signed tag down to each file.

Under `require-signed` the utility trusts nothing the repository server says about a version
except what hashes back to a tag whose signature it checked with its own keys:

1. `GET /NAME/versions/N/tag`: the raw tag; it must be `vN`, of type commit, signed by a key the
   policy trusts (`reposerver.signatures.verify` against the utility's key store), and bound to
   the repository the utility subscribed to: its `Collective-Repository` trailer must name the
   last path segment of the URL (a tag signed for another repository is refused). The server's
   version list must name the same commit (a lying index is refused, not ignored).
2. `GET /NAME/git-objects/SHA1` for the commit the tag names, then its tree (and subtrees):
   each object's SHA-1 is recomputed over the bytes received, so each is exactly the one the
   signed tag transitively names.
3. Every file the utility uses is checked against its tree entry: plain files (the CVL, the
   domain XML) by their git blob SHA-1; files stored in Git LFS (program disks, kernels) by the
   sha256 and size of the LFS pointer blob in the tree. A program disk's top object must be the
   pointer's oid; the objects under it are bound to it too, since each overlay names its
   backing file by sha256 inside its own (hashed) header and cached objects are stored under
   their verified sha256 only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utility.errors import TrustRefused

_DIRECTORY_MODE = b"40000"


def repository_name_of(url: str) -> str:
    """The repository name a subscribed URL names (its last path segment, without `.git`):
    what a signed tag's `Collective-Repository` trailer must say."""
    from urllib.parse import unquote, urlsplit

    path = unquote(urlsplit(url).path if "://" in url else url).rstrip("/")
    return path.rpartition("/")[2].removesuffix(".git")


def _git_hash(kind: bytes, body: bytes) -> str:
    return hashlib.sha1(kind + b" " + str(len(body)).encode() + b"\0" + body).hexdigest()


@dataclass
class SignedRelease:
    """Version `version` of the repository at `url`, its signed tag verified.

    Attributes:
        reader: the `reposerver.client` reader of the repository.
        label: "URL vN" for messages.
        commit: the commit the signed tag names.
        signer: who signed the tag (as the utility's trusted keys name them).
    """

    reader: Any
    label: str
    commit: str
    signer: str
    appliance: str | None = None
    """The appliance the signed tag's `Collective-Appliance` trailer names."""
    _trees: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    _root: str = ""

    @classmethod
    def open(cls, reader: Any, url: str, version: int, trust_scope: Path) -> SignedRelease:
        """Fetch and verify version `version`'s tag and commit.

        Raises:
            TrustRefused: why the version may not run, naming it.
        """
        from reposerver.signatures import verify

        label = f"{url} v{version}"
        try:
            raw = bytes(reader.tag(version))
            listed = str(reader.commit(version))
        except Exception as exc:  # noqa: BLE001 - the repository's errors become a refusal
            raise TrustRefused(f"{label}: cannot read its tag to verify it: {exc}") from None
        name = re.search(rb"^tag (\S+)$", raw, re.MULTILINE)
        target = re.search(rb"^object ([0-9a-f]{40})$", raw, re.MULTILINE)
        kind = re.search(rb"^type (\S+)$", raw, re.MULTILINE)
        if not name or name.group(1).decode() != f"v{version}":
            raise TrustRefused(f"{label}: the tag is not v{version}")
        if not target or not kind or kind.group(1) != b"commit":
            raise TrustRefused(f"{label}: the tag does not name a commit")
        commit = target.group(1).decode()
        if commit != listed:
            raise TrustRefused(
                f"{label}: the tag does not name the version's commit (the "
                f"server lists {listed[:12]}, the signed tag {commit[:12]})"
            )
        status = verify(trust_scope, raw, repository_name_of(url))
        if status.signer is None:
            raise TrustRefused(f"{label} refused by trust policy: {status.problem}")
        from reposerver.signatures import binding, split_signature

        release = cls(reader=reader, label=label, commit=commit, signer=status.signer)
        release.appliance = binding(split_signature(raw)[0]).appliance
        body = release._object(commit, b"commit")
        tree = re.match(rb"tree ([0-9a-f]{40})\n", body)
        if tree is None:
            raise TrustRefused(f"{label}: commit {commit[:12]} names no tree")
        release._root = tree.group(1).decode()
        return release

    # -- git objects ------------------------------------------------------------------------------

    def _object(self, sha1: str, kind: bytes) -> bytes:
        """The body of git object `sha1`, after checking its hash and type."""
        try:
            raw = bytes(self.reader.git_object(sha1))
        except Exception as exc:  # noqa: BLE001 - the repository's errors become a refusal
            raise TrustRefused(f"{self.label}: cannot read git object {sha1[:12]}: {exc}") from None
        if hashlib.sha1(raw).hexdigest() != sha1:
            raise TrustRefused(
                f"{self.label}: the server sent git object {sha1[:12]} with "
                "different content (its SHA-1 does not match): refused"
            )
        header, _, body = raw.partition(b"\0")
        if header != kind + b" " + str(len(body)).encode():
            raise TrustRefused(f"{self.label}: git object {sha1[:12]} is not a {kind.decode()}")
        return body

    def _tree(self, sha1: str) -> dict[str, tuple[bytes, str]]:
        """name -> (mode, sha1) of a tree (memoised: a verified tree never changes)."""
        if sha1 not in self._trees:
            body = self._object(sha1, b"tree")
            entries: dict[str, tuple[bytes, str]] = {}
            pos = 0
            while pos < len(body):
                space = body.index(b" ", pos)
                nul = body.index(b"\0", space)
                mode, name = body[pos:space], body[space + 1 : nul].decode("utf-8", "replace")
                entries[name] = (mode, body[nul + 1 : nul + 21].hex())
                pos = nul + 21
            self._trees[sha1] = entries
        return self._trees[sha1]

    def blob_id(self, name: str) -> str:
        """The blob the signed tree names for file `name` (a path inside the version)."""
        tree = self._root
        parts = [p for p in name.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            entry = self._tree(tree).get(part)
            last = i == len(parts) - 1
            if entry is None or (entry[0] == _DIRECTORY_MODE) == last:
                raise TrustRefused(
                    f"{self.label}: {name!r} is not a file of the signed commit {self.commit[:12]}"
                )
            tree = entry[1]
        if not parts:
            raise TrustRefused(f"{self.label}: empty file name")
        return tree

    def _pointer(self, name: str, blob: str, strict: bool) -> Any:
        """The LFS pointer that blob `blob` of file `name` holds, or None for a plain file (a
        malformed pointer too, unless `strict`: then it is refused with what is wrong)."""
        from reposerver.errors import IntegrityError
        from reposerver.lfs_pointer import looks_like_pointer, parse

        data = self._object(blob, b"blob")
        if not looks_like_pointer(data):
            return None
        try:
            return parse(data, f"{self.label}:{name}")
        except IntegrityError as exc:
            if strict:
                raise TrustRefused(str(exc)) from None
            return None

    # -- checks ---------------------------------------------------------------------------------

    def check_file(self, name: str, data: bytes) -> None:
        """`data` must be file `name` of the signed commit (its blob, or its LFS object).

        Raises:
            TrustRefused: naming the file, the version and what did not match.
        """
        blob = self.blob_id(name)
        if _git_hash(b"blob", data) == blob:
            return
        pointer = self._pointer(name, blob, strict=False)
        if (
            pointer is not None
            and len(data) == pointer.size
            and hashlib.sha256(data).hexdigest() == pointer.oid
        ):
            return
        raise TrustRefused(
            f"{self.label}: {name} as served does not match the signed commit "
            f"{self.commit[:12]} (blob {blob[:12]}): refused"
        )

    def check_appliance(self, name: str, text: str) -> None:
        """The signed CVL text `text` (file `name`) must define the appliance the tag is bound to
        (its last object, the one a CVL file's evaluation yields).

        Raises:
            TrustRefused: the tag names another appliance, or the text defines none.
        """
        from cvl.errors import CvlError
        from cvl.syntax import parse

        try:
            objects = parse(text, name).objects
        except CvlError:
            objects = ()
        defined = objects[-1].name.text if objects else None
        if defined is None or defined != self.appliance:
            raise TrustRefused(
                f"{self.label}: the tag was signed for appliance {self.appliance!r}, but "
                f"{name} defines {defined!r}: refused"
            )

    def check_disk(self, name: str, top_sha256: str) -> None:
        """The disk chain offered for `name` must end in the object its signed LFS pointer names.

        Raises:
            TrustRefused: the server's disk list and the signed tree disagree.
        """
        pointer = self._pointer(name, self.blob_id(name), strict=True)
        if pointer is None:
            raise TrustRefused(f"{self.label}: {name} is not a Git LFS disk in the signed commit")
        if pointer.oid != top_sha256:
            raise TrustRefused(
                f"{self.label}: the server's disk list gives {name} as "
                f"sha256:{top_sha256[:12]}, the signed commit's LFS pointer "
                f"names sha256:{pointer.oid[:12]}: refused"
            )
