#!/usr/bin/env python3
"""The markdown table of docs/performance.md ("Quantized linear kernels") from bench_linear's JSON.

    ./build/bench/bench_linear --benchmark_min_time=0.3 --benchmark_format=json > linear.json
    python3 bench/linear_table.py linear.json [more.json ...]

With several files (runs of the same benchmark), every cell is the median of its values over them.

Per layer shape and token count: SGEMM's time, and per configuration (w4a8, w4a4) the residual
alone and with its branch: time in ms, x_sgemm (SGEMM / kernel, both timed interleaved) and the
branch's extra time in percent (against the residual alone, interleaved too). Then, where the JSON
has them, the branch variants on the same W4A8 residual: x_sgemm and branch % of the rank-62 mxint8
branch with T quantized to mxint8 (w4a8_qt8_branch), and of a sint4 branch at rank 128 without and
with that (w4a8_r128_branch, w4a8_r128_qt8_branch).
"""
import json
import statistics
import sys


VARIANTS = [("w4a8_branch", "mxint8 r62"), ("w4a8_qt8_branch", "mxint8 r62, Qt mxint8"),
            ("w4a8_r128_branch", "sint4 r128"), ("w4a8_r128_qt8_branch", "sint4 r128, Qt mxint8")]


def main(paths):
    runs = {}  # (shape, tokens) -> kind -> field -> values over the files
    labels = []
    for path in paths:
        for b in json.load(open(path))["benchmarks"]:
            kind, shape, tokens = b["name"].split("/")[:3]
            fields = runs.setdefault((shape, tokens), {}).setdefault(kind, {})
            for key in ("real_time", "x_sgemm", "branch_pct"):
                if key in b:
                    fields.setdefault(key, []).append(b[key])
            if kind == "w4a8_branch":
                labels.append(b.get("label", ""))
    rows = {key: {kind: {f: statistics.median(v) for f, v in fields.items()} for kind, fields in kinds.items()}
            for key, kinds in runs.items()}
    print("| layer [out, in] | M | SGEMM ms | W4A8 ms | x SGEMM | + branch ms | x SGEMM | branch "
          "| W4A4 ms | x SGEMM | + branch ms | x SGEMM | branch |")
    print("|" + "---|" * 13)
    for (shape, tokens), r in rows.items():
        cells = [shape, tokens[1:], f"{r['sgemm']['real_time']:.2f}"]
        for config in ("w4a8", "w4a4"):
            res, br = r[config + "_residual"], r[config + "_branch"]
            cells += [f"{res['real_time']:.2f}", f"{res['x_sgemm']:.2f}", f"{br['real_time']:.2f}",
                      f"{br['x_sgemm']:.2f}", f"{br['branch_pct']:.0f}%"]
        print("| " + " | ".join(cells) + " |")
    variants = [(k, title) for k, title in VARIANTS if any(k in r for r in rows.values())]
    if variants:
        print("\nW4A8 residual with other branches: x SGEMM, branch\n")
        print("| layer [out, in] | M | " + " | ".join(title for _, title in variants) + " |")
        print("|" + "---|" * (2 + len(variants)))
        for (shape, tokens), r in rows.items():
            cells = [shape, tokens[1:]]
            for k, _ in variants:
                v = r.get(k)
                cells.append(f"{v['x_sgemm']:.2f}, {v['branch_pct']:.0f}%" if v else "")
            print("| " + " | ".join(cells) + " |")
    print(f"\nkernels: {labels[0] if labels else ''}" + (f" (medians of {len(paths)} runs)" if len(paths) > 1 else ""))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: linear_table.py bench_linear.json [more.json ...]")
    main(sys.argv[1:])
