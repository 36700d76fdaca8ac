"""End-to-end evaluation of quantization recipes on a class-conditional diffusion transformer (the
Fashion-MNIST DiT of tools/train_dit.py): generate N images with the 16-bit model and with each
recipe's quantized model, from the same seeds, labels and sampler steps, and compare.

    python tools/evaluate.py --model models/fashion-dit --recipes recipes/fashion-dit/*.yaml \
        -n 1000 -o docs/results/fashion-dit

Per configuration: PSNR and SSIM of each image against the 16-bit model's image from the same seed
(mean over images), Frechet distance of the classifier's 128-d features against the 10 000 real test
images, class accuracy (the classifier's label against the conditioning class), weight bits per
value, and (in timings.md only, so that two runs give identical tables) the quantization and
generation times. The weights are quantized with loraq.torch.quantize_module from the recipe; the
activations it needs for smoothing and the output SQNR are captured from the 16-bit model while it
generates the first --capture images. Each configuration's images, bits per value and quantization
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
import os
import pathlib
import sys
import time

import numpy as np
import torch

TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import dit_sampling  # noqa: E402
import fashion_classifier  # noqa: E402
import fashion_mnist  # noqa: E402
import image_metrics  # noqa: E402
import paper_claims  # noqa: E402


def load_model(folder: pathlib.Path):
    from diffusers import DiTTransformer2DModel
    # Computed in fp32 whatever the stored dtype (the embedded model is stored in fp16).
    model = DiTTransformer2DModel.from_pretrained(str(folder / "transformer"), torch_dtype=torch.float32)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    keep = {"num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample", "beta_start", "beta_end"}
    return model.eval(), {k: v for k, v in scheduler.items() if k in keep}


def atomic_write(path: pathlib.Path, data: bytes):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Evaluation:
    def __init__(self, args):
        self.args = args
        self.out = pathlib.Path(args.output)
        (self.out / "images").mkdir(parents=True, exist_ok=True)
        self.model, self.scheduler = load_model(pathlib.Path(args.model))
        self.labels = torch.arange(args.samples) % 10
        self.classifier = fashion_classifier.load(pathlib.Path(args.classifier))
        test_images, _ = fashion_mnist.load("test")
        _, self.real_features = fashion_classifier.predict(self.classifier, fashion_classifier.to_input(test_images))
        # What the cached images depend on: the model's bytes and the sampling settings.
        digest = hashlib.sha256()
        for name in sorted(os.listdir(pathlib.Path(args.model) / "transformer")):
            digest.update((pathlib.Path(args.model) / "transformer" / name).read_bytes())
        digest.update(json.dumps([args.samples, args.steps, args.guidance, args.seed, args.capture]).encode())
        self.settings = digest.hexdigest()[:16]

    def cached(self, name: str, recipe_bytes: bytes = b"") -> dict | None:
        """The stored images and figures of a configuration made with these settings (and this
        recipe text), or None."""
        cache = self.out / "images" / f"{name}.npz"
        if not cache.exists():
            return None
        stored = np.load(cache)
        if str(stored["settings"]) != self.settings_for(recipe_bytes):
            return None
        return {k: stored[k] for k in stored.files}

    def settings_for(self, recipe_bytes: bytes) -> str:
        return hashlib.sha256(self.settings.encode() + recipe_bytes).hexdigest()[:16]

    def generate(self, name: str, model, recipe_bytes: bytes = b"", **figures) -> tuple[np.ndarray, float]:
        """The configuration's images [n, 28, 28] in [-1, 1], generated and stored in OUT/images with
        `figures` (bits per value, quantization time) so that a later run skips both."""
        start = time.time()
        images = dit_sampling.sample(model, self.labels, seed=self.args.seed, steps=self.args.steps,
                                     guidance=self.args.guidance, scheduler_config=self.scheduler).squeeze(1).numpy()
        seconds = time.time() - start
        buffer = io.BytesIO()
        np.savez(buffer, images=images, seconds=seconds, settings=self.settings_for(recipe_bytes), **figures)
        atomic_write(self.out / "images" / f"{name}.npz", buffer.getvalue())
        return images, seconds

    def capture(self):
        """Activations of every linear layer while the 16-bit model generates --capture images."""
        from loraq.capture import capture_activations
        labels = self.labels[: self.args.capture]
        run = lambda: dit_sampling.sample(self.model, labels, seed=self.args.seed, steps=self.args.steps,  # noqa: E731
                                          guidance=self.args.guidance, scheduler_config=self.scheduler)
        return capture_activations(self.model, run, max_rows=self.args.capture_rows, seed=self.args.seed)

    def metrics(self, images: np.ndarray, reference: np.ndarray) -> dict:
        x = torch.from_numpy(images[:, None].astype(np.float32))
        predicted, features = fashion_classifier.predict(self.classifier, x)
        psnr = image_metrics.psnr(images, reference)
        return {"psnr_db": float(np.mean(np.minimum(psnr, 99.0))),  # identical images: counted as 99 dB
                "ssim": float(np.mean(image_metrics.ssim(images, reference))),
                "frechet_distance": image_metrics.frechet_distance(features.numpy(), self.real_features.numpy()),
                "class_accuracy": float((predicted == self.labels).float().mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/fashion-dit", help="diffusers folder: transformer/ and scheduler/")
    p.add_argument("--recipes", nargs="*", default=[], help="recipe files (each a configuration)")
    p.add_argument("-n", "--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50, help="DDIM sampler steps")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capture", type=int, default=20, help="images whose activations are captured")
    p.add_argument("--capture-rows", type=int, default=256, help="input rows kept per layer")
    p.add_argument("--classifier", default="models/fashion-classifier")
    p.add_argument("--grid-columns", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backend", default="fake_quant", choices=["fake_quant", "kernel"],
                   help="how quantized layers run: fake quantization in torch, or loraq's CPU kernels")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    import loraq.torch as lt

    ev = Evaluation(args)
    stored = ev.cached("fp32")
    reference, seconds = (stored["images"], float(stored["seconds"])) if stored else ev.generate("fp32", ev.model)
    rows = [{"configuration": "fp32", "recipe": "", "bits_per_value": 32.0, **ev.metrics(reference, reference)}]
    timings = [("fp32", 0.0, seconds)]
    grids = [reference[: args.grid_columns]]
    stats = None
    for recipe in args.recipes:
        name = pathlib.Path(recipe).stem
        recipe_bytes = pathlib.Path(recipe).read_bytes() + args.backend.encode()
        stored = ev.cached(name, recipe_bytes)
        if stored:
            images, seconds = stored["images"], float(stored["seconds"])
            bits, quantize_seconds = float(stored["bits_per_value"]), float(stored["quantize_seconds"])
        else:
            if stats is None:
                stats = ev.capture()
            model = copy.deepcopy(ev.model)
            start = time.time()
            report = lt.quantize_module(model, recipe, activations=stats, backend=args.backend)
            quantize_seconds = time.time() - start
            params = sum(r["out_features"] * r["in_features"] for r in report["layers"])
            bits = sum(r["bits_per_value"] * r["out_features"] * r["in_features"] for r in report["layers"]) / params
            images, seconds = ev.generate(name, model, recipe_bytes, bits_per_value=bits,
                                          quantize_seconds=quantize_seconds)
        rows.append({"configuration": name, "recipe": os.fspath(recipe), "bits_per_value": bits,
                     **ev.metrics(images, reference)})
        timings.append((name, quantize_seconds, seconds))
        grids.append(images[: args.grid_columns])
        print(json.dumps(rows[-1]), flush=True)

    out = ev.out
    header = ["configuration", "bits_per_value", "psnr_db", "ssim", "frechet_distance", "class_accuracy"]
    title = (f"{args.samples} samples per configuration, DDIM {args.steps} steps, guidance {args.guidance}, seed "
             f"{args.seed}; model {args.model}; quantized layers run by {args.backend}")
    md = [f"# End-to-end evaluation\n\n{title}.\n", "PSNR and SSIM: against the unquantized (fp32) model's image from the same "
          "seed (mean over images). Frechet distance: the classifier's 128-d features against the 10 000 real test "
          "images. Class accuracy: the classifier's label against the conditioning class. Bits per value: the "
          "quantized layers' weights (codes, scales, branch).\n",
          "| configuration | bits/value | PSNR dB | SSIM | Frechet distance | class accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['configuration']} | {r['bits_per_value']:.3f} | {r['psnr_db']:.2f} | {r['ssim']:.4f} | "
                  f"{r['frechet_distance']:.3f} | {r['class_accuracy']:.3f} |")
    atomic_write(out / "results.md", ("\n".join(md) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header + ["recipe"])
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(out / "results.csv", buffer.getvalue().encode())
    atomic_write(out / "claims.md", paper_claims.claims_markdown(rows).encode())
    atomic_write(out / "results.json", (json.dumps({"settings": vars(args), "rows": rows}, indent=1) + "\n").encode())
    timing_md = ["| configuration | quantize s | generate s |", "|---|---|---|"] + [
        f"| {n} | {q:.1f} | {g:.1f} |" for n, q, g in timings]
    atomic_write(out / "timings.md", (f"# Timings\n\n{title}; threads {torch.get_num_threads()}.\n\n" +
                                      "\n".join(timing_md) + "\n").encode())
    dit_sampling.save_grid(torch.from_numpy(np.concatenate(grids))[:, None], out / "grid.png",
                           columns=args.grid_columns, labels=[r["configuration"] for r in rows])
    print(f"wrote {out}/results.md, results.csv, results.json, claims.md, timings.md, grid.png")


if __name__ == "__main__":
    main()
