"""Compare two run_matrix.py result files (two commits on one card, or two cards on one commit).

    python benchmarks/compare.py results/OLD.json results/NEW.json

Rows are matched on (model, dtype, size, path, requested block batch); ratios are new / old.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Key = tuple[str, str, str, str, str]


def rows(path: Path) -> tuple[dict[str, Any], dict[Key, dict[str, Any]]]:
    doc = json.loads(path.read_text())
    table: dict[Key, dict[str, Any]] = {}
    for run in doc["runs"]:
        for r in run["rows"]:
            size = "x".join(map(str, r["resolution"]))
            table[(run["model"]["name"], r["dtype"], size, r["path"], r["block_batch_requested"])] = r
    return doc, table


def fmt(s: float | None) -> str:
    return "-" if s is None else f"{s:.3g}"


def ratio(new: float | None, old: float | None) -> str:
    return "-" if not new or not old else f"{new / old:.2f}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    (old_doc, old), (new_doc, new) = rows(Path(argv[0])), rows(Path(argv[1]))
    for label, doc in (("old", old_doc), ("new", new_doc)):
        m = doc["machine"]
        print(f"{label}: {doc['machine_slug']} {m['device_name']}, commit {doc['git']['describe']}, {doc['date']}")
    print("| model | dtype | size | path | n | s/NFE old | s/NFE new | time new/old | memory new/old | how (new) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(set(old) & set(new)):
        o, n = old[key], new[key]
        how = "est." if n["estimated"] else ("extrap." if n["extrapolated"] else "measured")
        print(f"| {' | '.join(key)} | {fmt(o['seconds_per_nfe'])} | {fmt(n['seconds_per_nfe'])} | "
              f"{ratio(n['seconds_per_nfe'], o['seconds_per_nfe'])} | "
              f"{ratio(n['peak_memory_bytes'], o['peak_memory_bytes'])} | {how} |")
    missing = sorted(set(old) ^ set(new))
    if missing:
        print(f"\n{len(missing)} row(s) in only one file, e.g. {' '.join(missing[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
