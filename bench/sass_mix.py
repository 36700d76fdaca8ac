"""What the GPU linear kernels' inner loops cost in issue slots, read off their machine code (SASS)
without a GPU: for each kernel with tensor-core instructions, the innermost loop that holds them,
its instructions by opcode, and the ceiling that one issued instruction per cycle per SM
sub-partition puts on the loop's rate.

    python3 bench/sass_mix.py build/src/CMakeFiles/loraq_cuda.dir/cuda/linear_cuda.cu.o [--arch sm_90]

Why: a kernel that spends N warp instructions on every IMMA cannot do better than
4 sub-partitions x MACs-per-IMMA / N multiply-adds a cycle on one SM, however well its memory
traffic overlaps. Hopper's dense BF16 tensor rate is 2048 multiply-adds a cycle per SM (989 TFLOPS
on 132 SMs at 1.83 GHz, NVIDIA's H100 SXM figures), so the ceiling says what fraction of that the
loop can reach, and a change to the loop can be weighed here before a GPU times it.

cuobjdump comes from $CUOBJDUMP, PATH, /usr/local/cuda/bin, or the copy inside the `triton` wheel
that torch installs (the CUDA toolkit of the build machines ships nvcc without it)."""
import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys

MACS_PER_IMMA = {"16832": 16 * 8 * 32, "16816": 16 * 8 * 16, "8816": 8 * 8 * 16}
BF16_MACS_PER_CYCLE_SM = 2048
SUBPARTITIONS = 4

INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?(.*)")
FUNCTION = re.compile(r"\s*Function : (\S+)")


def find_cuobjdump() -> str:
    candidates = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    try:
        import triton  # noqa: PLC0415  (only where torch brought it)
        candidates.append(str(pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    sys.exit("sass_mix: no cuobjdump (set CUOBJDUMP, or install the CUDA toolkit's, or torch's triton)")


def functions(sass: str):
    """(name, [(address, opcode, modifiers, operands)]) for each function of cuobjdump's listing."""
    name, body = None, []
    for line in sass.splitlines():
        f = FUNCTION.match(line)
        if f:
            if name:
                yield name, body
            name, body = f.group(1), []
            continue
        m = INSTRUCTION.match(line)
        if m and name:
            body.append((int(m.group(1), 16), m.group(3), m.group(4) or "", m.group(5)))
    if name:
        yield name, body


def mma_loops(body):
    """The [start, end] address ranges closed by a backward branch that hold an IMMA, shortest first."""
    loops = set()
    for address, opcode, _, operands in body:
        target = re.match(r"\s*(0x[0-9a-f]+)", operands)
        if opcode != "BRA" or not target or int(target.group(1), 16) >= address:
            continue
        start = int(target.group(1), 16)
        if any(o == "IMMA" and start <= a <= address for a, o, _, _ in body):
            loops.add((start, address))
    return sorted(loops, key=lambda loop: loop[1] - loop[0])


def demangle(name: str) -> str:
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return name


def loop_reports(sass: str):
    """For each function with an IMMA loop: a dict of its name, the innermost such loop's opcode
    counts, IMMA count and multiply-adds, the issue ceiling, and the loop around it's extra
    instructions (or None)."""
    for name, body in functions(sass):
        loops = mma_loops(body)
        if not loops:
            continue
        loop = loops[0]
        inside = [(o, mods) for a, o, mods, _ in body if loop[0] <= a <= loop[1]]
        immas = [mods for o, mods in inside if o == "IMMA"]
        macs = sum(MACS_PER_IMMA.get(m.split(".")[1], 0) for m in immas)
        # A loop around it (a pipelined kernel's stages) adds its own work once per trip of its own.
        outer = next((o for o in loops[1:] if o[0] <= loop[0] and loop[1] <= o[1]), None)
        yield {"name": name, "instructions": len(inside), "mix": collections.Counter(o for o, _ in inside),
               "imma": len(immas), "macs": macs, "ceiling": SUBPARTITIONS * macs / len(inside),
               "outer_extra": None if outer is None else
               sum(1 for a, _, _, _ in body if outer[0] <= a <= outer[1] and not loop[0] <= a <= loop[1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("object", help="an object file or cubin that nvcc built")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    sass = subprocess.run([find_cuobjdump(), "-sass", "-arch", args.arch, args.object], capture_output=True,
                          text=True, check=True).stdout
    reports = list(loop_reports(sass))
    if not reports:
        sys.exit(f"sass_mix: no loop with IMMA in {args.object} for {args.arch}")
    for r in reports:
        print(f"{demangle(r['name'])}\n  inner loop: {r['instructions']} instructions, {r['imma']} IMMA "
              f"({r['macs']} multiply-adds a warp), {r['instructions'] / r['imma']:.1f} instructions an IMMA")
        print("  " + ", ".join(f"{o} {n}" for o, n in r["mix"].most_common()))
        print(f"  issue ceiling: {r['ceiling']:.0f} multiply-adds a cycle per SM, "
              f"{r['ceiling'] / BF16_MACS_PER_CYCLE_SM:.2f} of Hopper's dense BF16 tensor rate")
        if r["outer_extra"] is not None:
            print(f"  the loop around it: {r['outer_extra']} more instructions a trip of its own")


if __name__ == "__main__":
    main()
