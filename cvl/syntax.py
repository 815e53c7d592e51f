"""CVL text to a syntax tree of frozen dataclasses that keep line and column.

The grammar lives in `cvl.lark` (Appendix A of the paper plus what its figures use). Lark's LALR
parser calls the transformer below while it parses, so no intermediate parse tree is built and
deeply nested input cannot exhaust Python's stack. Every failure becomes a `CvlSyntaxError` that
says where and what was expected; no other exception escapes `parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from cvl.errors import CvlError, CvlMapError, CvlSyntaxError
from cvl.maps import MAX_DEPTH


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """Anything with a position in a CVL file (1-based line and column)."""

    line: int
    col: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Name(Node):
    """An identifier as written: an object, parameter, component or import name."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Str(Node):
    """A quoted string constant, escapes already decoded."""

    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ref(Node):
    """A (possibly dotted) identifier: `domain`, `l.ethernet0.ip`."""

    parts: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pair(Node):
    """One `key => value` of a map."""

    key: str
    value: Rhs


@dataclass(frozen=True, slots=True, kw_only=True)
class MapLit(Node):
    """A map literal `{ k => v, ... }`; `depth` is 1 for a map without nested maps."""

    pairs: tuple[Pair, ...]
    depth: int = 1


Rhs = Str | Ref | MapLit


@dataclass(frozen=True, slots=True, kw_only=True)
class VarDecl(Node):
    """`var "required" "sensitive" a, b;`"""

    attrs: tuple[Str, ...]
    names: tuple[Name, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompDecl(Node):
    """`DNS d;` or `Interface ethernet1;`: components of a type."""

    type: Name
    names: tuple[Name, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Assign(Node):
    """`target = rhs, rhs, ...;`"""

    target: Ref
    values: tuple[Rhs, ...]


Stmt = VarDecl | CompDecl | Assign


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjDecl(Node):
    """`Name extends Parent { ... }` or, for base objects (Figure 1), `Name { ... }`."""

    name: Name
    parent: Name | None
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Import(Node):
    """`import { url => ..., cvl => ..., version => ... } Name;` (the map is checked later)."""

    spec: MapLit
    name: Name


TopStmt = Import | Assign | ObjDecl


@dataclass(frozen=True, slots=True, kw_only=True)
class Program:
    """One parsed CVL file."""

    file: str
    stmts: tuple[TopStmt, ...]
    lines: tuple[str, ...] = field(repr=False, compare=False)

    def source_line(self, line: int) -> str | None:
        """The text of a 1-based line, or None past the end."""
        return self.lines[line - 1] if 0 < line <= len(self.lines) else None

    @property
    def imports(self) -> tuple[Import, ...]:
        return tuple(s for s in self.stmts if isinstance(s, Import))

    @property
    def objects(self) -> tuple[ObjDecl, ...]:
        return tuple(s for s in self.stmts if isinstance(s, ObjDecl))


_STRING_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _pos(token: Token) -> dict[str, int]:
    return {"line": token.line or 0, "col": token.column or 0}


def _unquote(token: Token) -> str:
    """Decode a STRING token: `\\"`, `\\\\`, `\\n` and `\\t` are the only escapes."""
    body: str = token.value[1:-1]
    if "\\" not in body:
        return body

    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in _ESCAPES:
            raise CvlSyntaxError(
                f"unknown escape '\\{char}' in a string (use \\\", \\\\, \\n or \\t)",
                line=token.line or 0,
                col=(token.column or 0) + 1 + match.start(),
            )
        return _ESCAPES[char]

    return _STRING_ESCAPE.sub(replace, body)


class _ToAst(Transformer[Token, Any]):
    """Lark callbacks building the dataclasses above (run inline by the LALR parser)."""

    def start(self, children: list[TopStmt]) -> tuple[TopStmt, ...]:
        return tuple(children)

    def import_stmt(self, children: list[Any]) -> Import:
        keyword, spec, name = children
        return Import(spec=spec, name=Name(text=name.value, **_pos(name)), **_pos(keyword))

    def obj_decl(self, children: list[Any]) -> ObjDecl:
        name = children[0]
        parent = None
        rest = children[1:]
        if rest and isinstance(rest[0], Token):
            parent = Name(text=rest[0].value, **_pos(rest[0]))
            rest = rest[1:]
        return ObjDecl(
            name=Name(text=name.value, **_pos(name)), parent=parent, body=tuple(rest), **_pos(name)
        )

    def var_decl(self, children: list[Any]) -> VarDecl:
        keyword, *attrs, names = children
        return VarDecl(
            attrs=tuple(Str(value=_unquote(t), **_pos(t)) for t in attrs),
            names=names,
            **_pos(keyword),
        )

    def comp_decl(self, children: list[Any]) -> CompDecl:
        type_token, names = children
        return CompDecl(
            type=Name(text=type_token.value, **_pos(type_token)), names=names, **_pos(type_token)
        )

    def asgn_stmt(self, children: list[Any]) -> Assign:
        target, values = children
        return Assign(target=target, values=values, line=target.line, col=target.col)

    def item_list(self, children: list[Token]) -> tuple[Name, ...]:
        return tuple(Name(text=t.value, **_pos(t)) for t in children)

    def rhs_list(self, children: list[Rhs]) -> tuple[Rhs, ...]:
        return tuple(children)

    def string(self, children: list[Token]) -> Str:
        (token,) = children
        return Str(value=_unquote(token), **_pos(token))

    def ident(self, children: list[Token]) -> Ref:
        return Ref(parts=tuple(t.value for t in children), **_pos(children[0]))

    def map(self, children: list[Any]) -> MapLit:
        brace, *pairs = children
        depth = 1 + max((p.value.depth for p in pairs if isinstance(p.value, MapLit)), default=0)
        if depth > MAX_DEPTH:
            raise CvlMapError(
                f"maps nested deeper than {MAX_DEPTH} levels",
                line=brace.line or 0,
                col=brace.column or 0,
            )
        return MapLit(pairs=tuple(pairs), depth=depth, **_pos(brace))

    def pair(self, children: list[Any]) -> Pair:
        key, value = children
        text = _unquote(key) if key.type == "STRING" else key.value
        return Pair(key=text, value=value, **_pos(key))


# Human names for the grammar's terminals, used in "expected ..." messages.
_TERMINAL_NAMES = {"ITEM": "a name", "STRING": "a quoted string", "$END": "end of input"}


@cache
def _parser() -> Lark:
    """The LALR parser with the transformer inlined (no parse tree, no recursion).

    No `propagate_positions`: lark cannot hand rule positions (`meta`) to an inline transformer,
    so every node takes its position from a token it keeps (a name, string, `{`, `var`, `import`).
    """
    return Lark.open(
        "cvl.lark",
        rel_to=__file__,
        parser="lalr",
        strict=True,
        maybe_placeholders=False,
        transformer=_ToAst(),
    )


@cache
def _terminal_display() -> dict[str, str]:
    names = dict(_TERMINAL_NAMES)
    for terminal in _parser().terminals:
        if terminal.name not in names and terminal.pattern.type == "str":
            names[terminal.name] = f"'{terminal.pattern.value}'"
    return names


def _expected(tokens: set[str] | frozenset[str]) -> str:
    display = _terminal_display()
    shown = sorted({display.get(t, t) for t in tokens})
    if not shown:
        return ""
    if len(shown) == 1:
        return f"; expected {shown[0]}"
    return "; expected one of " + ", ".join(shown)


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _describe(exc: UnexpectedInput, text: str) -> tuple[str, int, int]:
    """Message and position for one of lark's parse errors."""
    if isinstance(exc, UnexpectedCharacters):
        at = exc.pos_in_stream or 0
        char = text[at] if 0 <= at < len(text) else "?"
        what = "unterminated string" if char == '"' else f"unexpected character {char!r}"
        if text.startswith("/*", at):
            what = "unterminated comment"
        return what + _expected(exc.allowed or set()), exc.line, exc.column
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        expected = _expected(exc.accepts or exc.expected or set())
        if token.type == "$END":
            line, col = _end_position(text)
            return "unexpected end of input" + expected, line, col
        return f"unexpected {token.value!r}" + expected, token.line or 0, token.column or 0
    if isinstance(exc, UnexpectedEOF):
        line, col = _end_position(text)
        return "unexpected end of input" + _expected(set(exc.expected or ())), line, col
    return str(exc), getattr(exc, "line", 0) or 0, getattr(exc, "column", 0) or 0


def parse(text: str, file: str = "<cvl>") -> Program:
    """Parse CVL source text into a `Program`; raise `CvlSyntaxError` (or `CvlMapError`)."""
    lines = tuple(text.split("\n"))
    try:
        stmts: tuple[TopStmt, ...] = _parser().parse(text)  # type: ignore[assignment]
    except UnexpectedInput as exc:
        message, line, col = _describe(exc, text)
        raise CvlSyntaxError(
            message, file=file, line=line, col=col, source_line=_line_of(lines, line)
        ) from None
    except VisitError as exc:
        inner = exc.orig_exc
        if isinstance(inner, CvlError):
            raise inner.located(file, inner.line, inner.col, _line_of(lines, inner.line)) from None
        raise CvlSyntaxError(f"cannot parse: {inner}", file=file) from None
    except CvlError as exc:
        raise exc.located(file, exc.line, exc.col, _line_of(lines, exc.line)) from None
    return Program(file=file, stmts=stmts, lines=lines)


def _line_of(lines: tuple[str, ...], line: int) -> str | None:
    return lines[line - 1] if 0 < line <= len(lines) else None
