"""End-to-end evaluation of quantization recipes on a diffusion transformer: generate N images with
the unquantized model and with each recipe's quantized model, from the same seeds and sampler steps,
and compare. Two kinds of model folder:

- a class-conditional DiT (transformer/ and scheduler/, as tools/train_dit.py exports the embedded
  Fashion-MNIST model): DDIM sampling, and the Fashion-MNIST classifier's class accuracy and Frechet
  distance beside PSNR and SSIM (tools/eval_class_dit.py);
- a diffusers text-to-image pipeline (model_index.json: PixArt-Sigma, SANA, ...): the pipeline's own
  sampler on the prompts of --prompts, PSNR and SSIM, and torchmetrics' LPIPS and FID where their
  weights are present locally (tools/eval_text_to_image.py).

    python tools/evaluate.py --model models/fashion-dit --recipes recipes/fashion-dit/*.yaml \
        -n 1000 -o docs/results/fashion-dit
    python tools/evaluate.py --model PixArt-Sigma-XL-2-1024-MS --recipes recipes/*.yaml -n 1000 \
        --dtype bfloat16 --device cuda -o out/eval-pixart

Per configuration the tables give the metrics against the unquantized model's images, the weight bits
per value, and (in timings.md only, so that two runs give identical tables) the quantization and
generation times. The weights are quantized with loraq.torch.quantize_module from the recipe; the
activations it needs for smoothing and the output SQNR are captured from the unquantized model while
it generates the first --capture images. Each configuration's images, bits per value and quantization
time are kept in OUT/images/ and reused by a later run with the same settings and the same recipe
text (neither quantizing nor generating again), so a killed evaluation resumes. --backend kernel
runs the quantized layers on loraq's CPU kernels instead of fake quantization.

Writes OUT/results.{md,csv,json}, OUT/claims.md (the paper's orderings, tools/paper_claims.py),
OUT/timings.md and OUT/grid.png (rows: configurations; columns: the first --grid-columns seeds).
"""
import argparse
import copy
import csv
import hashlib
import io
import json
import math
import os
import pathlib
import sys
import time
import zipfile

import numpy as np
import torch

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import image_grid  # noqa: E402
import paper_claims  # noqa: E402


def atomic_write(path: pathlib.Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Cache:
    """Each configuration's images and figures in OUT/images/NAME.npz, keyed by the workload's
    settings and the recipe text."""

    def __init__(self, folder: pathlib.Path, settings: str):
        self.folder, self.settings = folder, settings
        folder.mkdir(parents=True, exist_ok=True)

    def key(self, recipe_bytes: bytes) -> str:
        return hashlib.sha256(self.settings.encode() + recipe_bytes).hexdigest()[:16]

    def load(self, name: str, recipe_bytes: bytes = b"") -> dict | None:
        path = self.folder / f"{name}.npz"
        if not path.exists():
            return None
        try:
            stored = np.load(path)
            if str(stored["settings"]) != self.key(recipe_bytes):
                return None
            return {k: stored[k] for k in stored.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # unreadable: made again
            print(f"evaluate: {path} is unreadable ({e}); generating it again", file=sys.stderr)
            return None

    def store(self, name: str, images: np.ndarray, recipe_bytes: bytes = b"", **figures):
        buffer = io.BytesIO()
        np.savez(buffer, images=images, settings=self.key(recipe_bytes), **figures)
        atomic_write(self.folder / f"{name}.npz", buffer.getvalue())


def workload_for(args):
    """The text-to-image pipeline workload for a folder with model_index.json, else the DiT one."""
    if (pathlib.Path(args.model) / "model_index.json").exists():
        import eval_text_to_image  # noqa: PLC0415
        return eval_text_to_image.TextToImage(args)
    import eval_class_dit  # noqa: PLC0415
    return eval_class_dit.ClassConditionalDiT(args)


def cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/fashion-dit",
                   help="a DiT folder (transformer/, scheduler/) or a diffusers pipeline folder (model_index.json)")
    p.add_argument("--recipes", nargs="*", default=[], help="recipe files (each a configuration)")
    p.add_argument("-n", "--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, help="sampler steps (DiT: DDIM, default 50; pipelines: their default)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (DiT default 2; pipelines: theirs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capture", type=int, default=20, help="images whose activations are captured")
    p.add_argument("--capture-rows", type=int, default=256, help="input rows kept per layer")
    p.add_argument("--classifier", default="models/fashion-classifier", help="DiT: the Fashion-MNIST classifier")
    p.add_argument("--prompts", default=str(TOOLS / "eval_prompts.txt"), help="pipelines: one prompt per line, cycled")
    p.add_argument("--height", type=int, help="pipelines: image height (default: the pipeline's)")
    p.add_argument("--width", type=int, help="pipelines: image width (default: the pipeline's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="pipelines: the unquantized model's dtype")
    p.add_argument("--device", default="cpu", help="pipelines: cpu or cuda")
    p.add_argument("--batch", type=int, default=4, help="pipelines: prompts per call")
    p.add_argument("--pipeline-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="pipelines: another argument of the pipeline's call, VALUE as JSON (repeatable)")
    p.add_argument("--fid-weights", help="pipelines: torch-fidelity's Inception weights, for FID")
    p.add_argument("--grid-columns", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backend", default="fake_quant", choices=["fake_quant", "kernel"],
                   help="how quantized layers run: fake quantization in torch, or loraq's CPU kernels")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    if not pathlib.Path(args.model).is_dir():
        p.error(f"--model {args.model}: not a folder (a DiT with transformer/ and scheduler/, or a diffusers "
                "pipeline with model_index.json)")
    for recipe in args.recipes:
        if not pathlib.Path(recipe).is_file():
            p.error(f"recipe {recipe}: no such file")
    for option, value, least in (("--samples", args.samples, 1), ("--steps", args.steps, 1),
                                 ("--capture", args.capture, 1), ("--capture-rows", args.capture_rows, 1),
                                 ("--batch", args.batch, 1), ("--grid-columns", args.grid_columns, 1),
                                 ("--threads", args.threads, 0), ("--height", args.height, 1),
                                 ("--width", args.width, 1)):
        if value is not None and value < least:
            p.error(f"{option} {value}: expected an integer >= {least}")
    if args.guidance is not None and not math.isfinite(args.guidance):
        p.error(f"--guidance {args.guidance}: expected a finite number")
    try:  # before minutes of sampling, not after
        pathlib.Path(args.output).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"-o {args.output}: cannot create the output folder ({e.strerror})")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    import loraq.torch as lt

    work = workload_for(args)
    out = pathlib.Path(args.output)
    cache = Cache(out / "images", work.settings)

    def generate(name: str, module, recipe_bytes: bytes = b"", **figures) -> tuple[np.ndarray, float]:
        start = time.time()
        images = work.sample(module)
        seconds = time.time() - start
        cache.store(name, images, recipe_bytes, seconds=seconds, **figures)
        return images, seconds

    stored = cache.load(work.reference)
    reference, seconds = (stored["images"], float(stored["seconds"])) if stored else generate(work.reference, work.module)
    rows = [{"configuration": work.reference, "recipe": "", "bits_per_value": 32.0 if work.reference == "fp32" else 16.0,
             **work.metrics(reference, reference)}]
    timings = [(work.reference, 0.0, seconds)]
    grids = [work.to_uint8(reference[: args.grid_columns])]
    stats = None
    for recipe in args.recipes:
        name = pathlib.Path(recipe).stem
        recipe_bytes = pathlib.Path(recipe).read_bytes() + args.backend.encode()
        stored = cache.load(name, recipe_bytes)
        if stored:
            images, seconds = stored["images"], float(stored["seconds"])
            bits, quantize_seconds = float(stored["bits_per_value"]), float(stored["quantize_seconds"])
        else:
            if stats is None:
                from loraq.capture import capture_activations
                stats = capture_activations(work.module, lambda: work.sample(work.module, count=args.capture),
                                            max_rows=args.capture_rows, seed=args.seed)
            model = copy.deepcopy(work.module)
            start = time.time()
            report = lt.quantize_module(model, recipe, activations=stats, backend=args.backend)
            quantize_seconds = time.time() - start
            params = sum(r["out_features"] * r["in_features"] for r in report["layers"])
            bits = sum(r["bits_per_value"] * r["out_features"] * r["in_features"] for r in report["layers"]) / params
            images, seconds = generate(name, model, recipe_bytes, bits_per_value=bits, quantize_seconds=quantize_seconds)
            del model
        rows.append({"configuration": name, "recipe": os.fspath(recipe), "bits_per_value": bits,
                     **work.metrics(images, reference)})
        timings.append((name, quantize_seconds, seconds))
        grids.append(work.to_uint8(images[: args.grid_columns]))
        print(json.dumps(rows[-1]), flush=True)
    write_tables(out, work, rows, timings, args)
    # One row per configuration even when there are fewer samples than --grid-columns.
    image_grid.save_grid(np.concatenate(grids), out / "grid.png", columns=min(args.grid_columns, args.samples),
                         labels=[r["configuration"] for r in rows])
    print(f"wrote {out}/results.md, results.csv, results.json, claims.md, timings.md, grid.png")


def write_tables(out: pathlib.Path, work, rows: list[dict], timings: list[tuple], args):
    keys = [key for key, _, _ in work.columns]
    md = [f"# End-to-end evaluation\n\n{work.title}.\n",
          f"{work.legend} Bits per value: the quantized layers' weights (codes, scales, branch).\n",
          "| configuration | bits/value | " + " | ".join(h for _, h, _ in work.columns) + " |",
          "|---|---|" + "---|" * len(work.columns)]
    for r in rows:
        md.append(f"| {r['configuration']} | {r['bits_per_value']:.3f} | " +
                  " | ".join(cell(r[k], f) for k, _, f in work.columns) + " |")
    atomic_write(out / "results.md", ("\n".join(md) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["configuration", "bits_per_value", *keys, "recipe"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else "" if v is None else v) for k, v in r.items()})
    atomic_write(out / "results.csv", buffer.getvalue().encode())
    atomic_write(out / "claims.md", paper_claims.claims_markdown(rows).encode())
    atomic_write(out / "results.json", (json.dumps({"settings": vars(args), "rows": rows}, indent=1) + "\n").encode())
    timing_md = ["| configuration | quantize s | generate s |", "|---|---|---|"] + [
        f"| {n} | {q:.1f} | {g:.1f} |" for n, q, g in timings]
    atomic_write(out / "timings.md", (f"# Timings\n\n{work.title}; threads {torch.get_num_threads()}.\n\n" +
                                      "\n".join(timing_md) + "\n").encode())


if __name__ == "__main__":
    main()
