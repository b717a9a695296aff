"""Print the markdown rows of docs/results.md from the eval JSON files of scripts/smollm2_ppl_table.sh."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("fp", "FP (float32)", "-"), ("w6a8", "W6A8 (`--preset w6a8`)", "210"),
        ("w6a6", "W6A6 (`--preset w6a6`)", "0"),
        ("flexq-rtn", "FlexQ hard-coded mix (`--preset flexq-rtn`: down_proj A8)", "30"),
        ("plan-a8x30", "sensitivity plan, same A8 count (`--a8-count 30`)", "30"),
        ("plan-b10", "sensitivity plan, `--a8-budget 0.1`", "21"), ("plan-b25", "sensitivity plan, `--a8-budget 0.25`", "52")]


def main(runs: Path) -> None:
    fp = json.loads((runs / "eval-fp.json").read_text())["ppl"]
    print("| model | A8 linears | PPL | vs FP |\n|---|---:|---:|---:|")
    for key, label, a8 in ROWS:
        f = runs / f"eval-{key}.json"
        if not f.is_file():
            print(f"| {label} | {a8} | not measured | |")
            continue
        ppl = json.loads(f.read_text())["ppl"]
        print(f"| {label} | {a8} | {ppl:.3f} | {'' if key == 'fp' else f'{(ppl / fp - 1) * 100:+.1f}%'} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2"))
