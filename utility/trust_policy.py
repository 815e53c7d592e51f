"""Which repository versions the utility agrees to run: `require-signed` with trusted keys.

Policy is global and per repository URL (a URL's own policy replaces the global one). Under
`require-signed` the utility fetches the raw annotated tag of the version it is about to run
(`GET /NAME/versions/N/tag`), checks that it is the tag `vN`, and verifies its signature itself
against the policy's trusted keys (armored GPG public keys, SSH allowed_signers lines), using
the same verification code as the repository server but with the utility's own key store; it
never relies on the server's "signed" JSON.

Keys live in `<state>/trust/<scope>/trust/gpg/*.asc` and `.../trust/allowed_signers` (the layout
`reposerver.signatures.verify` reads), scope `global` or a hash of the URL.

Known gap: the tag's `object` line is compared with the commit the server names for the version;
the files read from the server are not yet re-hashed against that commit's git tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from utility.errors import UtilityError

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
            found.append({"url": data.get("url"), "require_signed": data["require_signed"],
                          "keys": keys})
        return found

    def _effective(self, url: str) -> Path | None:
        """The scope directory whose policy applies to `url`, if it requires signatures."""
        for scope in (_scope(url), GLOBAL):
            path = self.root / scope / "policy.json"
            if path.exists():
                return path.parent if json.loads(path.read_text())["require_signed"] else None
        return None

    def problems(self, versions: Iterable[tuple[str, str]]) -> list[str]:
        """One line per (url, version) that policy refuses, saying why; [] if all may run."""
        from reposerver.client import open_repository
        from reposerver.signatures import verify

        problems = []
        for url, version in sorted(set(versions)):
            scope = self._effective(url)
            if scope is None:
                continue
            if not version.isdigit():
                problems.append(f"{url} is unversioned; policy requires a signed version")
                continue
            try:
                repository = open_repository(url)
                raw = bytes(repository.tag(int(version)))
                commit = str(repository.commit(int(version)))
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{url} v{version}: cannot read its tag to verify it: {exc}")
                continue
            name = re.search(rb"^tag (\S+)$", raw, re.MULTILINE)
            target = re.search(rb"^object ([0-9a-f]{40})$", raw, re.MULTILINE)
            if not name or name.group(1).decode() != f"v{version}":
                problems.append(f"{url} v{version}: the tag is not v{version}")
                continue
            if not target or target.group(1).decode() != commit:
                problems.append(f"{url} v{version}: the tag does not name the version's commit")
                continue
            status = verify(scope, raw)
            if status.signer is None:
                problems.append(f"{url} v{version} refused by trust policy: {status.problem}")
        return problems
