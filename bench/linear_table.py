#!/usr/bin/env python3
"""The markdown table of docs/performance.md ("Quantized linear kernels") from bench_linear's JSON.

    ./build/bench/bench_linear --benchmark_min_time=0.3 --benchmark_format=json > linear.json
    python3 bench/linear_table.py linear.json [more.json ...]

With several files (runs of the same benchmark), every cell is the median of its values over them.

Per layer shape and token count: SGEMM's time, and per configuration (w4a8, w4a4) the residual
alone and with its branch: time in ms, x_sgemm (SGEMM / kernel, both timed interleaved) and the
branch's extra time in percent (against the residual alone, interleaved too); then, where the JSON
has it, W4A8 with the intermediate T quantized to mxint8 (w4a8_qt8_branch): x_sgemm and branch %.
"""
import json
import statistics
import sys


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
    qt = any("w4a8_qt8_branch" in r for r in rows.values())
    print("| layer [out, in] | M | SGEMM ms | W4A8 ms | x SGEMM | + branch ms | x SGEMM | branch "
          "| W4A4 ms | x SGEMM | + branch ms | x SGEMM | branch |" + (" W4A8, Qt mxint8: x SGEMM | branch |" if qt else ""))
    print("|" + "---|" * (15 if qt else 13))
    for (shape, tokens), r in rows.items():
        cells = [shape, tokens[1:], f"{r['sgemm']['real_time']:.2f}"]
        for config in ("w4a8", "w4a4"):
            res, br = r[config + "_residual"], r[config + "_branch"]
            cells += [f"{res['real_time']:.2f}", f"{res['x_sgemm']:.2f}", f"{br['real_time']:.2f}",
                      f"{br['x_sgemm']:.2f}", f"{br['branch_pct']:.0f}%"]
        if qt:
            q = r.get("w4a8_qt8_branch")
            cells += [f"{q['x_sgemm']:.2f}", f"{q['branch_pct']:.0f}%"] if q else ["", ""]
        print("| " + " | ".join(cells) + " |")
    print(f"\nkernels: {labels[0] if labels else ''}" + (f" (medians of {len(paths)} runs)" if len(paths) > 1 else ""))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: linear_table.py bench_linear.json [more.json ...]")
    main(sys.argv[1:])
