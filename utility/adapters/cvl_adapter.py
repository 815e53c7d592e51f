"""The one place the utility calls the CVL part (README contract); wiring changes happen here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utility.adapters.bundles import StoredBundle
from utility.core.model_view import ModelView

Fetched = tuple[str, str, str, str]
"""An imported CVL text as the evaluator received it: (absolute url, cvl file, version, text)."""


class _Recording:
    """A resolver that remembers every text it hands the evaluator (for the trust checks), and
    answers again from `replay` what an earlier evaluation of the same operation fetched."""

    def __init__(self, inner: Any, record: list[Fetched], replay: list[Fetched]) -> None:
        self.inner = inner
        self.record = record
        self.replay = replay

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        from cvl.resolver import canonical_url

        where = canonical_url(url, base_dir)
        for seen_url, seen_cvl, seen_version, text in self.replay:
            if (seen_url, seen_cvl) == (where, cvl) and version in (None, seen_version):
                return text, seen_version
        text, resolved = self.inner.fetch(url, cvl, version, base_dir)
        self.record.append((where, cvl, str(resolved), text))
        return text, resolved


class BundleResolver:
    """`file:` imports answered from a stored bundle (see `utility.core.bundle`).

    An import of a directory inside the bundle's root is read from the bundle only. Any other
    `file:` import is the daemon's own file system: read there only when `local_files` (a VAP of
    an administrator, who owns that file system), refused otherwise, so a user's CVL can never
    make the daemon read `file:/etc/...` or another user's directory.
    """

    def __init__(self, bundle: StoredBundle, inner: Any, local_files: bool) -> None:
        self.bundle = bundle
        self.inner = inner
        self.local_files = local_files

    def fetch(
        self, url: str, cvl: str, version: str | None, base_dir: str | None
    ) -> tuple[str, str]:
        from cvl.errors import CvlImportError
        from cvl.resolver import UNVERSIONED, check_cvl_name, file_url_path

        if url.startswith("file:"):
            check_cvl_name(cvl)
            directory = file_url_path(url, base_dir)
            relative = self.bundle.relative(directory)
            name = f"{relative}/{cvl}" if relative else cvl
            if relative is not None and self.bundle.has(name):
                try:
                    return self.bundle.read(name).decode("utf-8"), UNVERSIONED
                except UnicodeDecodeError:
                    raise CvlImportError(f"{url}: {cvl} in the bundle is not UTF-8") from None
            if not self.local_files:
                where = (
                    f"no file {cvl} in the submitted bundle"
                    if relative is not None
                    else f"{directory} is outside the submitted bundle ({self.bundle.root_dir})"
                )
                raise CvlImportError(
                    f"{url}: {where}; the utility reads no file of its own for a user: keep "
                    "imported directories under the CVL file's directory (they are bundled) or "
                    "publish them to a repository"
                )
        return self.inner.fetch(url, cvl, version, base_dir)  # type: ignore[no-any-return]


def _resolver(  # type: ignore[no-untyped-def]
    source: Source,
    record: list[Fetched] | None = None,
    replay: list[Fetched] | None = None,
):
    """The resolver of one evaluation: the bundle's files, then repositories (file: repository
    directories by version, for administrators; http(s))."""
    from reposerver.client import make_resolver
    from utility.adapters.event_guard import ExactResolver

    inner = BundleResolver(source.bundle, ExactResolver(make_resolver()), source.local_files)
    if record is None and not replay:
        return inner
    return _Recording(inner, record if record is not None else [], list(replay or []))


@dataclass(frozen=True)
class Source:
    """What one evaluation reads: a stored bundle, and whether the daemon may read `file:`
    imports outside it from its own file system (only for administrators' VAPs)."""

    bundle: StoredBundle
    local_files: bool = False


def evaluate(
    source: Source,
    overrides: Mapping[str, str] | None = None,
    record: list[Fetched] | None = None,
    replay: list[Fetched] | None = None,
    assigned: Mapping[str, str] | None = None,
) -> ModelView:
    """Evaluate a bundle's CVL with its imports and return the model view, sensitive values in
    clear (the view feeds the guests; `desired.build_state` masks what it stores).

    Args:
        overrides: the user's values (secrets); they may not set utility-assigned parameters.
        assigned: the utility's values for the parameters it assigns (addresses).
        record: when given, every imported CVL text fetched is appended to it.
        replay: texts an earlier evaluation fetched (and the trust checks saw): imports they
            cover are answered from them, so both evaluations see the same versions and bytes.

    Raises:
        cvl.errors.CvlError: the file does not parse, import or evaluate (rendered at the edge).
    """
    import cvl

    bundle = source.bundle
    model = cvl.evaluate_text(
        bundle.text,
        bundle.root_path,
        resolver=_resolver(source, record, replay),
        overrides=dict(overrides or {}),
        base_dir=bundle.root_dir,
        assigned=dict(assigned or {}),
    )
    return ModelView.from_json(model.to_json(reveal=True))


PLACEHOLDER = "<missing>"


def _analyse(source: Source, overrides: Mapping[str, str], record: list[Fetched] | None) -> Any:
    import cvl

    bundle = source.bundle
    return cvl.analyse_text(
        bundle.text,
        bundle.root_path,
        resolver=_resolver(source, record),
        overrides=dict(overrides),
        base_dir=bundle.root_dir,
    )


def evaluate_for_checks(
    source: Source,
    overrides: Mapping[str, str] | None = None,
    record: list[Fetched] | None = None,
) -> tuple[ModelView | None, list[str]]:
    """Evaluate for the pre-start checks: the model and the CVL problems, all of them.

    When the only CVL errors are required parameters without a value, the file is evaluated
    again with a placeholder for each, so the other checks (requires, blacklist, placement) can
    still run and every problem is reported together. Any other CVL error leaves no model.
    """
    analysis = _analyse(source, dict(overrides or {}), record)
    if analysis.model is not None:
        return ModelView.from_json(analysis.model.to_json()), []
    problems = [_render(e) for e in analysis.errors]
    placeholders = analysis.missing_placeholders(PLACEHOLDER)
    if placeholders is None:
        return None, problems
    filled = {**dict(overrides or {}), **placeholders}
    again = _analyse(source, filled, record)
    model = ModelView.from_json(again.model.to_json()) if again.model is not None else None
    return model, problems


def _local_resolver():  # type: ignore[no-untyped-def]
    """The resolver of the user's own process (the client): its file system and http(s)."""
    from reposerver.client import make_resolver

    return make_resolver()


def missing_sensitive_paths(cvl_path: Path) -> list[str]:
    """Required sensitive parameters without a value, as the CVL reports them (the user's secret
    cache supplies these; parameters that merely reference one of them are not listed). Runs
    in the user's process, on the user's file."""
    import cvl
    from cvl.errors import CvlMissingError

    analysis = cvl.analyse_file(str(cvl_path), resolver=_local_resolver())
    return [
        e.path for e in analysis.errors if isinstance(e, CvlMissingError) and e.sensitive and e.path
    ]


def _render(error: object) -> str:
    text = error.render() if hasattr(error, "render") else str(error)  # type: ignore[attr-defined]
    return str(text).splitlines()[0]


def check(cvl_path: Path, overrides: Mapping[str, str] | None = None) -> list[str]:
    """Every CVL error of the file, rendered; [] when it is fine."""
    import cvl

    errors = cvl.check_file(
        str(cvl_path), resolver=_local_resolver(), overrides=dict(overrides or {})
    )
    return [e.render() if hasattr(e, "render") else str(e) for e in errors]


def decode_map(text: str) -> list[tuple[str, str]]:
    """Decode a CVL map string (`device=vdb&size=100mb`) into its pairs."""
    from cvl.maps import decode

    return decode(text)
