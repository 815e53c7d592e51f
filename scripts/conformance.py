"""Render the conformance table from the records the tests wrote (`tests/conformance.py`).

python scripts/conformance.py            print the table
python scripts/conformance.py --check    exit 1 if README.md's table differs (scripts/test)
python scripts/conformance.py --write    put the table into README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "artifacts" / "conformance"
README = ROOT / "README.md"
BEGIN, END = "<!-- conformance:begin -->", "<!-- conformance:end -->"


def table() -> str:
    """The markdown table of every recorded row, sorted by client then operation."""
    rows = sorted(
        {(r["client"], r["operation"], r["result"]) for r in map(_load, RECORDS.glob("*.json"))}
    )
    lines = ["| client | operation | result |", "|---|---|---|"]
    lines += [f"| {client} | {operation} | {result} |" for client, operation, result in rows]
    return "\n".join(lines)


def _load(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text()))


def _readme_block(text: str) -> tuple[int, int]:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: no {BEGIN} … {END} block")
    return start + len(BEGIN), end


def main(argv: list[str]) -> int:
    """Print, check or write the table."""
    if not RECORDS.is_dir():
        print(f"no records in {RECORDS}: run the tests first", file=sys.stderr)
        return 1
    wanted = "\n" + table() + "\n"
    if not argv:
        print(wanted.strip())
        return 0
    text = README.read_text()
    start, end = _readme_block(text)
    if argv == ["--write"]:
        README.write_text(text[:start] + wanted + text[end:])
        return 0
    if argv == ["--check"]:
        if text[start:end] == wanted:
            return 0
        print(
            "README.md's conformance table differs from what the tests recorded;\n"
            "run `.venv/bin/python scripts/conformance.py --write` and commit.\n" + wanted,
            file=sys.stderr,
        )
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
