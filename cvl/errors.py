"""The one exception hierarchy of the `cvl` package (a leaf module: imports nothing of the project).

Every error a user can cause carries where it happened (file, line, column, the source line) and,
when it was found in an imported file, the chain of import statements that led there, so it can
be printed the way compilers do::

    Groupware.cvl:31:5: error: parameter 'dommain' is not declared on DNS
        d.dommain = domain;
        ^
      imported from AcmeGroupware.cvl:1:1

Line 0 means "no position" (an error about a whole file, or about a `--set` override).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ImportSite:
    """One link of an import chain: the position of an `import` statement."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class CvlError(Exception):
    """Base class of every error about CVL text, its imports or its evaluation."""

    def __init__(
        self,
        message: str,
        file: str = "<cvl>",
        line: int = 0,
        col: int = 0,
        source_line: str | None = None,
        chain: Sequence[ImportSite] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.source_line = source_line
        self.chain: tuple[ImportSite, ...] = tuple(chain)

    def __str__(self) -> str:
        return self.render()

    @property
    def key(self) -> tuple[str, int, int, str]:
        """Identity used to report an error once even if many instances of a type trigger it."""
        return (self.file, self.line, self.col, self.message)

    def located(
        self,
        file: str,
        line: int,
        col: int,
        source_line: str | None = None,
        chain: Sequence[ImportSite] = (),
    ) -> CvlError:
        """Return a copy of this error placed at a position (used for resolver errors)."""
        other = copy.copy(self)
        other.file, other.line, other.col = file, line, col
        other.source_line = source_line
        other.chain = tuple(chain)
        return other

    def render(self) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, the source line with a caret, then the import chain."""
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        lines = [f"{where}: error: {self.message}"]
        if self.source_line is not None and self.line > 0:
            text, caret = _window(self.source_line.rstrip("\r\n"), max(self.col - 1, 0))
            prefix = "".join(ch if ch == "\t" else " " for ch in text[:caret])
            lines.append(f"    {text}")
            lines.append(f"    {prefix}^")
        lines.extend(f"  imported from {site}" for site in reversed(self.chain))
        return "\n".join(lines)


def _window(text: str, caret: int, width: int = 160) -> tuple[str, int]:
    """At most `width` characters of `text` around index `caret` (long generated lines)."""
    if len(text) <= width:
        return text, caret
    start = max(0, min(caret - width // 2, len(text) - width))
    shown = text[start : start + width]
    if start > 0:
        shown, caret = "..." + shown, caret - start + 3
    if start + width < len(text):
        shown += "..."
    return shown, caret


class CvlSyntaxError(CvlError):
    """The text is not CVL: an unexpected character or token, or a malformed literal."""


class CvlVersionError(CvlError):
    """The `CVL = "..."` statement names a language version other than 0.8."""


class CvlDeclarationError(CvlError):
    """A declaration is wrong: duplicate name, unknown type, bad `extends`, forbidden component."""


class CvlAssignmentError(CvlError):
    """An assignment or reference names a parameter or component that does not exist."""


class CvlCycleError(CvlError):
    """Values, types or imports depend on themselves; the message names the cycle."""


class CvlMapError(CvlError):
    """A map literal or map string is malformed (for example nested deeper than allowed)."""


class CvlMissingError(CvlError):
    """A "required" parameter has no value and nothing (not even the utility) will give it one.

    `path` is the parameter's full path (`domain`, `d.domain`). `sensitive` marks a parameter
    whose value must never be written in a CVL file: the user agent supplies it at start.
    """

    def __init__(
        self, message: str, *, path: str = "", sensitive: bool = False, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.path = path
        self.sensitive = sensitive


class CvlOverrideError(CvlError):
    """A `--set PATH=VALUE` override names no parameter of the evaluated appliance."""


class CvlAssignedError(CvlError):
    """A parameter the utility assigns (an interface's mac, ip, subnet, netmask) is set by CVL
    text or an override, or the `assigned` channel names a parameter the utility does not assign.

    `path` is the parameter's full path (`d.ethernet0.ip`).
    """

    def __init__(self, message: str, *, path: str = "", **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.path = path


class CvlImportError(CvlError):
    """An import cannot be fetched, or its file does not define the imported object."""

    def __init__(self, message: str, *, unreachable: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.unreachable = unreachable


class CvlErrors(CvlError):
    """Several errors found in one evaluation; `errors` holds each, `render()` prints them all."""

    def __init__(self, errors: Iterable[CvlError]) -> None:
        self.errors: list[CvlError] = list(errors)
        first = self.errors[0]
        super().__init__(
            f"{len(self.errors)} errors; first: {first.message}",
            file=first.file,
            line=first.line,
            col=first.col,
            source_line=first.source_line,
            chain=first.chain,
        )

    def render(self) -> str:
        return "\n".join(error.render() for error in self.errors)
