"""Warp stall samples of one Nsight Compute report, from its SASS source page exported as CSV
(`ncu -i R.ncu-rep --page source --csv --print-source sass`): the split by stall reason, then the SASS
instructions with the most samples and their main reasons. Used by gpu_int8_ncu.sh (SOURCE=1).

    python3 scripts/ncu_stall_sites.py REPORT-sass.csv [TOP]
"""

from __future__ import annotations

import csv
import sys

SAMPLES = "Warp Stall Sampling (All Samples)"


def main() -> None:
    rows = list(csv.reader(open(sys.argv[1])))
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    header = next(r for r in rows if SAMPLES in r)
    data = [r for r in rows[rows.index(header) + 1:] if len(r) == len(header)]
    col = header.index(SAMPLES)
    reasons = {i: h for i, h in enumerate(header) if h.startswith("stall_") and "(Not Issued)" not in h}
    count = lambda r, i: int(r[i]) if r[i].isdigit() else 0  # noqa: E731
    total = sum(count(r, col) for r in data)
    split = sorted(((sum(count(r, i) for r in data), h) for i, h in reasons.items()), reverse=True)
    print(f"{total} samples: " + ", ".join(f"{h[6:]} {100 * n / total:.1f}%" for n, h in split if n))
    for r in sorted(data, key=lambda r: -count(r, col))[:top]:
        why = sorted(((count(r, i), h[6:]) for i, h in reasons.items()), reverse=True)[:2]
        print(f"{100 * count(r, col) / total:5.1f}%  {r[1].strip()[:60]:60s}  " + ", ".join(f"{w} {n}" for n, w in why))


if __name__ == "__main__":
    main()
