"""One table across every benchmark: each script records its headline ratios here.

A benchmark calls ``record(...)`` for each figure it measured against a baseline in the
same run; when ``KIZUNA_BENCH_SUMMARY`` names a file (``make bench`` sets it), the figures
are appended to it as JSON lines, and ``python benchmarks/common/summary.py FILE`` prints
them as one table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ENVIRONMENT = "KIZUNA_BENCH_SUMMARY"


def record(benchmark: str, figure: str, ratio: float, baseline: str) -> None:
    """Keep ``figure`` = ``ratio`` × ``baseline`` for the summary (no-op outside make bench)."""
    target = os.environ.get(ENVIRONMENT)
    if not target:
        return
    line = {"benchmark": benchmark, "figure": figure, "ratio": ratio, "baseline": baseline}
    with Path(target).open("a", encoding="utf-8") as sink:
        sink.write(json.dumps(line) + "\n")


def main(path: Path) -> None:
    """Print every recorded figure as one table."""
    table = Table(title="benchmarks: each figure as a ratio to its baseline, same run")
    for column in ("benchmark", "figure", "ratio", "baseline"):
        table.add_column(column, justify="right" if column == "ratio" else "left")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for entry in map(json.loads, lines):
        table.add_row(
            entry["benchmark"], entry["figure"], f"{entry['ratio']:.2f}", entry["baseline"]
        )
    Console().print(table)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
