"""Benchmark harness: runs each `scripts/benchmarks/bench_*.py` module's `rows()`, prints a table.

A benchmark module defines `rows(only: Callable[[str], bool]) -> Iterable[Row]`. Each row is our
figure and, where one exists, a baseline measured in the same run (or a published figure, marked
as such), so the ratio is honest on a noisy machine. Use `median_time` for timings.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table."""

    name: str
    ours: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    note: str = ""

    @property
    def ratio(self) -> str:
        if self.baseline in (None, 0) or self.ours == 0:
            return ""
        return f"{self.ours / self.baseline:.3g}x"


def median_time(fn: Callable[[], object], repeat: int = 7, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s" and value < 1:
        return f"{value * 1000:.2f} ms"
    if unit == "B":
        for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= scale:
                return f"{value / scale:.2f} {name}"
        return f"{value:.0f} B"
    return f"{value:.3g} {unit}"


def load_modules() -> list:
    mods = []
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    for path in sorted((HERE / "benchmarks").glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        mods.append(module)
    return mods


def main(argv: list[str]) -> int:
    filters = [a.lower() for a in argv]

    def only(name: str) -> bool:
        return not filters or any(f in name.lower() for f in filters)

    header = f"{'benchmark':58} {'ours':>12} {'baseline':>12} {'ratio':>8}  baseline is / goal"
    print(header)
    print("-" * len(header))
    failed = 0
    for module in load_modules():
        try:
            rows: Iterable[Row] = module.rows(only)
            for row in rows:
                if not only(row.name):
                    continue
                extra = "; ".join(x for x in (row.baseline_label, row.goal, row.note) if x)
                print(
                    f"{row.name:58} {_fmt(row.ours, row.unit):>12} "
                    f"{_fmt(row.baseline, row.unit):>12} {row.ratio:>8}  {extra}",
                    flush=True,
                )
        except Exception as exc:  # noqa: BLE001 - one broken module must not hide the others
            failed += 1
            print(f"{module.__name__:58} FAILED: {exc!r}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
