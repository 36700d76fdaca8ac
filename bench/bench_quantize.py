#!/usr/bin/env python3
"""Whole-checkpoint benchmark of `loraq quantize`: a PixArt-Sigma-shaped checkpoint (0.6 B
parameters by default, generated once and kept under build/bench-data/) quantized with a recipe,
as parameters per second and as a ratio to reading the checkpoint file once (the anchor, timed in
the same run), with the peak resident memory of the run against its bound: 200 MB + for each of the
2 layers in flight, 3 float32 copies of the largest tensor (the weight widened, its quantized
values, and the packed output with its scratch). Medians of --repeat runs; the machines are shared
and noisy. --max-rss-gb adds an absolute limit (the FLUX test: 4 GB).

  python3 bench/bench_quantize.py [--recipe recipes/rtn-sint4.yaml] [--hidden 1152] [--repeat 3]
  python3 bench/bench_quantize.py --arch flux --data /big/disk --repeat 1   # 12 B parameters, 24 GB: more than
                                                                           # this machine's memory
  python3 bench/bench_quantize.py --arch sana                              # 1.6 B parameters (SANA 1600M)
  python3 bench/bench_quantize.py --arch sana --recipe recipes/sana/loraq-sint4-r128.yaml --repeat 1
                                                                           # LoRaQ on it: 1 h 44 min, 2 cores
  python3 bench/bench_quantize.py --recipe recipes/loraq-sint4-r128.yaml --device cuda --repeat 1
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import struct
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_once(files):
    """Seconds to read every byte of the files (16 MiB reads into one buffer)."""
    buf = bytearray(16 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as h:
            while h.readinto(view):
                pass
    return time.perf_counter() - start


def largest_tensor_params(files):
    """(the element count of the largest tensor, the element count of all of them)."""
    largest, params = 0, 0
    for f in files:
        with open(f, "rb") as h:
            (n,) = struct.unpack("<Q", h.read(8))
            header = json.loads(h.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in t["shape"]:
                count *= d
            largest = max(largest, count)
            params += count
    return largest, params


def run_measured(cmd):
    """Wall seconds and peak RSS (bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return seconds, usage.ru_maxrss * 1024, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "rtn-sint4.yaml"))
    ap.add_argument("--hidden", type=int, default=1152)
    ap.add_argument("--blocks", type=int, default=28, help="transformer blocks (flux: double-stream, default 19)")
    ap.add_argument("--arch", choices=["pixart-sigma", "sana", "flux"], default="pixart-sigma")
    ap.add_argument("--device", default="cpu", help="loraq quantize --device (cpu, cuda, cuda:N)")
    ap.add_argument("--layers-in-flight", type=int, default=0, help="loraq quantize --layers-in-flight (0: its default)")
    ap.add_argument("--data", help="where the generated checkpoint is kept (default: BUILD/bench-data)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--max-rss-gb", type=float, help="also hold the peak RSS under this many GB")
    args = ap.parse_args()

    loraq = pathlib.Path(args.build) / "tools" / "cli" / "loraq"
    make_model = loraq.parent / "loraq-make-model"
    data = pathlib.Path(args.data or pathlib.Path(args.build) / "bench-data")
    if args.arch == "flux":
        model = data / "flux"
        make = [str(make_model), "--arch", "flux", "-o", str(model)]
        if args.recipe == ap.get_default("recipe"):
            args.recipe = str(ROOT / "recipes" / "flux" / "rtn-sint4.yaml")
    elif args.arch == "sana":
        model = data / "sana-1600m"
        make = [str(make_model), "--arch", "sana", "-o", str(model)]
        if args.recipe == ap.get_default("recipe"):
            args.recipe = str(ROOT / "recipes" / "sana" / "rtn-sint4.yaml")
    else:
        model = data / f"pixart-h{args.hidden}-b{args.blocks}"
        make = [str(make_model), "-o", str(model), "--hidden", str(args.hidden), "--blocks", str(args.blocks)]
    if not (model / "diffusion_pytorch_model.safetensors.index.json").exists() and not any(model.glob("*.safetensors")):
        subprocess.run(make, check=True)
    files = sorted(model.glob("*.safetensors"))
    largest, params = largest_tensor_params(files)
    file_bytes = sum(f.stat().st_size for f in files)

    read_once(files)  # warm the page cache so that both sides read from memory, not from the disk
    reads, runs, rss = [], [], []
    out = data / "quantized"
    for _ in range(args.repeat):
        reads.append(read_once(files))
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(loraq), "quantize", str(model), "--recipe", args.recipe, "-o", str(out), "--no-progress"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.layers_in_flight:
            cmd += ["--layers-in-flight", str(args.layers_in_flight)]
        cmd += ["--device", args.device]
        seconds, peak, _ = run_measured(cmd)
        runs.append(seconds)
        rss.append(peak)
    shutil.rmtree(out, ignore_errors=True)

    read_s, run_s = statistics.median(reads), statistics.median(runs)
    in_flight = args.layers_in_flight or (2 if args.device == "cpu" else 8)
    bound = 200e6 + in_flight * 3 * 4 * largest
    if args.max_rss_gb:
        bound = min(bound, args.max_rss_gb * 1e9)
    result = {
        "model": model.name, "parameters": params, "file_bytes": file_bytes, "largest_tensor_params": largest,
        "recipe": pathlib.Path(args.recipe).name, "threads": args.threads or os.cpu_count(), "device": args.device,
        "read_seconds_median": read_s, "quantize_seconds_median": run_s,
        "read_params_per_s": params / read_s, "quantize_params_per_s": params / run_s,
        "ratio_to_file_read": read_s / run_s,
        "peak_rss_bytes_max": max(rss), "peak_rss_bound_bytes": bound, "within_bound": max(rss) < bound,
    }
    print(f"{model.name}: {params / 1e6:.1f} M parameters, {file_bytes / 1e9:.2f} GB, largest tensor "
          f"{largest / 1e6:.1f} M values; recipe {result['recipe']}, {result['threads']} threads, device {args.device}, "
          f"median of {args.repeat}")
    print(f"  read the file once     {read_s:8.3f} s  {params / read_s / 1e6:10.1f} M params/s  (anchor)")
    print(f"  loraq quantize         {run_s:8.3f} s  {params / run_s / 1e6:10.1f} M params/s  "
          f"ratio to read {result['ratio_to_file_read']:.3f}")
    print(f"  peak RSS {max(rss) / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB (200 MB + {in_flight} layers x 3 fp32 copies of the "
          f"largest tensor{', at most --max-rss-gb' if args.max_rss_gb else ''}): "
          f"{'within' if result['within_bound'] else 'OVER'}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
