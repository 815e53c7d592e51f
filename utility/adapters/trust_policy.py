"""Which repository versions the utility agrees to run: `require-signed` with trusted keys.

Policy is global and per repository URL (a URL's own policy replaces the global one). Under
`require-signed` the utility fetches the raw annotated tag of the version it is about to run
(`GET /NAME/versions/N/tag`), checks that it is the tag `vN`, and verifies its signature itself
against the policy's trusted keys (armored GPG public keys, SSH allowed_signers lines), using
the same verification code as the repository server but with the utility's own key store; it
never relies on the server's "signed" JSON. It then walks the signed commit's tree itself and
checks every file it uses against it (`utility.adapters.signed_release`).

Keys live in `<state>/trust/<scope>/trust/gpg/*.asc` and `.../trust/allowed_signers` (the layout
`reposerver.signatures.verify` reads), scope `global` or a hash of the URL.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from utility.adapters.signed_release import SignedRelease
from utility.errors import TrustRefused, UtilityError

GLOBAL = "global"


def _scope(url: str | None) -> str:
    return GLOBAL if not url else hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class TrustPolicy:
    """The utility's trust settings under its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "trust"

    def _dir(self, url: str | None) -> Path:
        return self.root / _scope(url)

    def _policy_file(self, url: str | None) -> Path:
        return self._dir(url) / "policy.json"

    def set_require_signed(self, url: str | None, required: bool) -> None:
        """Turn `require-signed` on or off globally (url None) or for one repository URL."""
        directory = self._dir(url)
        (directory / "trust" / "gpg").mkdir(parents=True, exist_ok=True)
        path = self._policy_file(url)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": url, "require_signed": required}))
        os.replace(tmp, path)

    def add_key(self, url: str | None, key: str) -> str:
        """Trust an armored GPG public key or an SSH `PRINCIPAL KEYTYPE KEY` line."""
        from reposerver import trust

        directory = self._dir(url)
        (directory / "trust" / "gpg").mkdir(parents=True, exist_ok=True)
        if not self._policy_file(url).exists():
            self.set_require_signed(url, False)
        try:
            if "BEGIN PGP PUBLIC KEY BLOCK" in key:
                trust.add_gpg_key(directory, key)
                return "gpg"
            trust.add_ssh_signer(directory, key.strip())
            return "ssh"
        except Exception as exc:  # noqa: BLE001 - the repository part's errors become ours
            raise UtilityError(f"trusted key: {exc}") from None

    def describe(self) -> list[dict[str, object]]:
        """Every scope: URL (None for global), require-signed, number of keys."""
        found = []
        for path in sorted(self.root.glob("*/policy.json")):
            data = json.loads(path.read_text())
            signers = path.parent / "trust" / "allowed_signers"
            keys = len(list((path.parent / "trust" / "gpg").glob("*.asc")))
            keys += len(signers.read_text().splitlines()) if signers.exists() else 0
            found.append(
                {"url": data.get("url"), "require_signed": data["require_signed"], "keys": keys}
            )
        return found

    def _effective(self, url: str) -> Path | None:
        """The scope directory whose policy applies to `url`, if it requires signatures."""
        for scope in (_scope(url), GLOBAL):
            path = self.root / scope / "policy.json"
            if path.exists():
                return path.parent if json.loads(path.read_text())["require_signed"] else None
        return None

    def session(self) -> TrustSession:
        """A fresh per-operation view: releases verified once, files checked on every read."""
        return TrustSession(self)

    def problems(self, versions: Iterable[tuple[str, str]]) -> list[str]:
        """One line per (url, version) that policy refuses, saying why; [] if all may run."""
        return self.session().problems(versions)


class TrustSession:
    """The trust decisions of one start or update.

    `release(url, version)` verifies a version's signed tag, commit and tree once (see
    `utility.adapters.signed_release`); the files the operation then reads are checked against it by
    `RepositoryFiles`, and the CVL texts the evaluator fetched by `cvl_problems`.
    """

    def __init__(self, policy: TrustPolicy) -> None:
        self.policy = policy
        self._releases: dict[tuple[str, str], SignedRelease | None] = {}
        self._refused: dict[tuple[str, str], str] = {}

    def release(self, url: str, version: str) -> SignedRelease | None:
        """The verified release, or None when policy does not require signatures for `url`.

        Raises:
            TrustRefused: policy requires a signature and the version does not check out.
        """
        from reposerver.client import open_repository

        key = (url.rstrip("/"), str(version))
        if key in self._refused:
            raise TrustRefused(self._refused[key])
        if key not in self._releases:
            scope = self.policy._effective(url)
            try:
                if scope is None:
                    self._releases[key] = None
                elif not str(version).isdigit():
                    raise TrustRefused(f"{url} is unversioned; policy requires a signed version")
                else:
                    self._releases[key] = SignedRelease.open(
                        open_repository(url), url, int(version), scope
                    )
            except TrustRefused as exc:
                self._refused[key] = str(exc)
                raise
        return self._releases[key]

    def release_for(self, url: str, version: str) -> SignedRelease | None:
        """Like `release`, but None for a refused version too: its refusal is what `problems`
        reports, and every caller checks `problems` before anything runs."""
        try:
            return self.release(url, version)
        except TrustRefused:
            return None

    def problems(self, versions: Iterable[tuple[str, str]]) -> list[str]:
        """One line per (url, version) that policy refuses, saying why; [] if all may run."""
        problems = []
        for url, version in sorted(set(versions)):
            try:
                self.release(url, version)
            except TrustRefused as exc:
                problems.append(str(exc))
        return problems

    def all_problems(
        self, versions: Iterable[tuple[str, str]], fetched: Iterable[tuple[str, str, str, str]]
    ) -> list[str]:
        """`problems` and `cvl_problems` together, each line once."""
        found = self.problems(versions)
        return found + [p for p in self.cvl_problems(fetched) if p not in found]

    def cvl_problems(self, fetched: Iterable[tuple[str, str, str, str]]) -> list[str]:
        """Each fetched (url, cvl file, version, text) of a signed-only repository must be that
        file of the signed commit; one line per mismatch."""
        problems = []
        for url, cvl, version, text in fetched:
            try:
                release = self.release(url, version)
                if release is not None:
                    release.check_file(cvl, text.encode("utf-8"))
                    release.check_appliance(cvl, text)
            except TrustRefused as exc:
                if str(exc) not in problems:
                    problems.append(str(exc))
        return problems
