"""Collects the errors of one evaluation so that `check` can report all of them, each once."""

from __future__ import annotations

from cvl.errors import CvlError, CvlErrors


class Diagnostics:
    """An ordered, de-duplicated list of errors.

    De-duplicated because a type used 10,000 times must report its error once.
    """

    def __init__(self) -> None:
        self.errors: list[CvlError] = []
        self._seen: set[tuple[str, int, int, str]] = set()

    def add(self, error: CvlError) -> None:
        if error.key not in self._seen:
            self._seen.add(error.key)
            self.errors.append(error)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        """Raise the single error, or `CvlErrors` holding all of them."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise CvlErrors(self.errors)
