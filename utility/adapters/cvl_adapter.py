"""The one place the utility calls the CVL part (README contract); wiring changes happen here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def _resolver(record: list[Fetched] | None = None, replay: list[Fetched] | None = None):  # type: ignore[no-untyped-def]
    """The repository-aware resolver (file: repository directories by version, http:)."""
    from reposerver.client import make_resolver
    from utility.adapters.event_guard import ExactResolver

    inner = ExactResolver(make_resolver())
    if record is None and not replay:
        return inner
    return _Recording(inner, record if record is not None else [], list(replay or []))


def evaluate(
    cvl_path: Path,
    overrides: Mapping[str, str] | None = None,
    record: list[Fetched] | None = None,
    replay: list[Fetched] | None = None,
    assigned: Mapping[str, str] | None = None,
) -> ModelView:
    """Evaluate a CVL file with its imports and return the model view, sensitive values in
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

    model = cvl.evaluate_file(
        str(cvl_path),
        resolver=_resolver(record, replay),
        overrides=dict(overrides or {}),
        assigned=dict(assigned or {}),
    )
    return ModelView.from_json(model.to_json(reveal=True))


PLACEHOLDER = "<missing>"


def evaluate_for_checks(
    cvl_path: Path,
    overrides: Mapping[str, str] | None = None,
    record: list[Fetched] | None = None,
) -> tuple[ModelView | None, list[str]]:
    """Evaluate for the pre-start checks: the model and the CVL problems, all of them.

    When the only CVL errors are required parameters without a value, the file is evaluated
    again with a placeholder for each, so the other checks (requires, blacklist, placement) can
    still run and every problem is reported together. Any other CVL error leaves no model.
    """
    import cvl

    analysis = cvl.analyse_file(
        str(cvl_path), resolver=_resolver(record), overrides=dict(overrides or {})
    )
    if analysis.model is not None:
        return ModelView.from_json(analysis.model.to_json()), []
    problems = [_render(e) for e in analysis.errors]
    placeholders = analysis.missing_placeholders(PLACEHOLDER)
    if placeholders is None:
        return None, problems
    filled = {**dict(overrides or {}), **placeholders}
    again = cvl.analyse_file(str(cvl_path), resolver=_resolver(record), overrides=filled)
    model = ModelView.from_json(again.model.to_json()) if again.model is not None else None
    return model, problems


def missing_sensitive_paths(cvl_path: Path) -> list[str]:
    """Required sensitive parameters without a value, as the CVL reports them (the user's secret
    cache supplies these; parameters that merely reference one of them are not listed)."""
    import cvl
    from cvl.errors import CvlMissingError

    analysis = cvl.analyse_file(str(cvl_path), resolver=_resolver())
    return [
        e.path for e in analysis.errors if isinstance(e, CvlMissingError) and e.sensitive and e.path
    ]


def _render(error: object) -> str:
    text = error.render() if hasattr(error, "render") else str(error)  # type: ignore[attr-defined]
    return str(text).splitlines()[0]


def check(cvl_path: Path, overrides: Mapping[str, str] | None = None) -> list[str]:
    """Every CVL error of the file, rendered; [] when it is fine."""
    import cvl

    errors = cvl.check_file(str(cvl_path), resolver=_resolver(), overrides=dict(overrides or {}))
    return [e.render() if hasattr(e, "render") else str(e) for e in errors]


def decode_map(text: str) -> list[tuple[str, str]]:
    """Decode a CVL map string (`device=vdb&size=100mb`) into its pairs."""
    from cvl.maps import decode

    return decode(text)
