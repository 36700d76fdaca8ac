#!/usr/bin/env python3
"""The markdown table of docs/performance.md ("Quantized linear kernels") from bench_linear's JSON.

    ./build/bench/bench_linear --benchmark_min_time=0.3 --benchmark_format=json > linear.json
    python3 bench/linear_table.py linear.json

Per layer shape and token count: SGEMM's time, and per configuration (w4a8, w4a4) the residual
alone and with its branch: time in ms, x_sgemm (SGEMM / kernel, both timed interleaved) and the
branch's extra time in percent (against the residual alone, interleaved too).
"""
import json
import sys


def main(path):
    rows = {}
    for b in json.load(open(path))["benchmarks"]:
        kind, shape, tokens = b["name"].split("/")[:3]
        rows.setdefault((shape, tokens), {})[kind] = b
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
    label = next(iter(rows.values()))["w4a8_branch"].get("label", "")
    print(f"\nkernels: {label}")


if __name__ == "__main__":
    main(sys.argv[1])
