"""A diffusers text-to-image pipeline folder (model_index.json: PixArt-Sigma, SANA, ...) as a
workload of tools/evaluate.py. Its transformer is what gets quantized; the text encoder, VAE and
scheduler stay as they are. Image i is generated from prompt i (the prompt file cycled) with its own
generator seeded from (seed, i), so every configuration starts from the same noise whatever the
batch. Metrics against the unquantized pipeline's images: PSNR and SSIM (per channel, averaged), and
torchmetrics' LPIPS and FID when their weights are on this machine (tools/optional_metrics.py)."""
import hashlib
import json
import pathlib

import numpy as np
import torch

import image_metrics
import optional_metrics

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_prompts(path: pathlib.Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text().splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise SystemExit(f"evaluate: {path} holds no prompt (one per line; '#' starts a comment)")
    return prompts


def pipeline_arguments(pairs: list[str]) -> dict:
    """--pipeline-arg KEY=VALUE, VALUE read as JSON where it parses (true, 16, "x"), else as a string."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"evaluate: --pipeline-arg {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class TextToImage:
    def __init__(self, args):
        from diffusers import DiffusionPipeline
        folder = pathlib.Path(args.model)
        if args.backend == "kernel" and args.device != "cpu":
            raise SystemExit("evaluate: --backend kernel runs loraq's CPU kernels; use --device cpu")
        self.pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=DTYPES[args.dtype]).to(args.device)
        self.pipe.set_progress_bar_config(disable=True)
        if not isinstance(getattr(self.pipe, "transformer", None), torch.nn.Module):
            raise SystemExit(f"evaluate: the pipeline in {folder} ({type(self.pipe).__name__}) has no transformer")
        self.module = self.pipe.transformer
        self.reference = "16-bit" if args.dtype != "float32" else "fp32"
        self.seed, self.batch, self.device = args.seed, args.batch, args.device
        prompts = read_prompts(pathlib.Path(args.prompts))
        self.prompts = [prompts[i % len(prompts)] for i in range(args.samples)]
        self.kwargs = pipeline_arguments(args.pipeline_arg)
        for key, value in (("num_inference_steps", args.steps), ("guidance_scale", args.guidance),
                           ("height", args.height), ("width", args.width)):
            if value is not None:
                self.kwargs[key] = value
        # What the cached images depend on: the transformer's and scheduler's files, the pipeline's
        # index, the prompts and every sampling setting. (The text encoder and VAE are not hashed: they
        # are large and loraq leaves them alone.)
        digest = hashlib.sha256()
        for path in [folder / "model_index.json", *sorted((folder / "transformer").iterdir()),
                     *sorted((folder / "scheduler").iterdir())]:
            digest.update(path.name.encode() + path.read_bytes())
        digest.update(json.dumps([self.prompts, self.kwargs, args.seed, args.capture, args.dtype],
                                 sort_keys=True).encode())
        self.settings = digest.hexdigest()[:16]
        self.optional = {"lpips": optional_metrics.lpips(), "fid": optional_metrics.fid(args.fid_weights)}
        self.columns = [("psnr_db", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
                        ("fid", "FID", "{:.3f}")]
        settings = ", ".join(f"{k} {v}" for k, v in sorted(self.kwargs.items()))
        self.title = (f"{args.samples} samples per configuration ({len(prompts)} prompts from {args.prompts}), "
                      f"{type(self.pipe).__name__} in {args.dtype} on {args.device}, {settings or 'pipeline defaults'}, "
                      f"seed {args.seed}; model {args.model}; quantized layers run by {args.backend}")
        why_not = " ".join(f"{key.upper()}: {why}." for key, (_, why) in self.optional.items() if why)
        self.legend = (f"PSNR and SSIM: against the unquantized ({self.reference}) pipeline's image from the same prompt "
                       "and seed (mean over images; SSIM per channel, averaged). LPIPS (AlexNet) likewise; FID: "
                       "Inception features of the configuration's images against the unquantized ones. "
                       + (f"Columns shown as '-' were not computed: {why_not}" if why_not else ""))

    def sample(self, module, count: int | None = None) -> np.ndarray:
        """Images [n, h, w, 3] as uint8 (what a user saves, and 1/4 of the memory of floats) of the first
        `count` (default all) prompts, by `module` in place of the pipeline's transformer."""
        prompts = self.prompts if count is None else self.prompts[:count]
        kept, self.pipe.transformer = self.pipe.transformer, module
        try:
            out = []
            for start in range(0, len(prompts), self.batch):
                batch = prompts[start:start + self.batch]
                generators = [torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + start + i)
                              for i in range(len(batch))]
                with torch.no_grad():
                    out.append(self.pipe(prompt=batch, generator=generators, output_type="np", **self.kwargs).images)
            return (np.concatenate(out) * 255).round().clip(0, 255).astype(np.uint8)
        finally:
            self.pipe.transformer = kept

    def metrics(self, images: np.ndarray, reference: np.ndarray) -> dict:
        images, reference = images.astype(np.float32) / 255, reference.astype(np.float32) / 255
        ssim = np.mean([image_metrics.ssim(images[..., c], reference[..., c], data_range=1.0)
                        for c in range(images.shape[-1])], axis=0)
        row = {"psnr_db": image_metrics.mean_psnr(images, reference, data_range=1.0), "ssim": float(np.mean(ssim))}
        for key, (compute, _) in self.optional.items():
            row[key] = compute(images, reference) if compute else None
        return row

    @staticmethod
    def to_uint8(images: np.ndarray) -> np.ndarray:
        return images
