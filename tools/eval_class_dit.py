"""The class-conditional DiT of tools/train_dit.py (a folder with transformer/ and scheduler/) as a
workload of tools/evaluate.py: DDIM sampling with classifier-free guidance from fixed seeds, and
metrics from the Fashion-MNIST classifier (class accuracy, Frechet distance of its features against
the 10 000 real test images) beside PSNR and SSIM against the unquantized model's images."""
import hashlib
import json
import os
import pathlib

import numpy as np
import torch

import dit_sampling
import fashion_classifier
import fashion_mnist
import image_metrics


class ClassConditionalDiT:
    reference = "fp32"  # the row (and cache file) of the unquantized model
    columns = [("psnr_db", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
               ("frechet_distance", "Frechet distance", "{:.3f}"), ("class_accuracy", "class accuracy", "{:.3f}")]

    def __init__(self, args):
        from diffusers import DiTTransformer2DModel
        if args.device != "cpu":
            raise SystemExit(f"evaluate: --device {args.device}: the class-conditional DiT runs on the CPU only")
        self.steps = args.steps or 50
        self.guidance = 2.0 if args.guidance is None else args.guidance
        args.steps, args.guidance = self.steps, self.guidance  # the values used, for results.json
        self.samples, self.seed = args.samples, args.seed
        folder = pathlib.Path(args.model)
        # Computed in fp32 whatever the stored dtype (the embedded model is stored in fp16). A few MB:
        # loaded plainly (diffusers' low-memory loading needs `accelerate`, and warns without it).
        self.module = DiTTransformer2DModel.from_pretrained(str(folder / "transformer"), torch_dtype=torch.float32,
                                                            low_cpu_mem_usage=False).eval()
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        keep = {"num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample", "beta_start", "beta_end"}
        self.scheduler = {k: v for k, v in scheduler.items() if k in keep}
        self.labels = torch.arange(args.samples) % 10
        self.classifier = fashion_classifier.load(pathlib.Path(args.classifier))
        test_images, _ = fashion_mnist.load("test")
        _, self.real_features = fashion_classifier.predict(self.classifier, fashion_classifier.to_input(test_images))
        # What the cached images depend on: the model's bytes and the sampling settings.
        digest = hashlib.sha256()
        for name in sorted(os.listdir(folder / "transformer")):
            digest.update((folder / "transformer" / name).read_bytes())
        digest.update(json.dumps([args.samples, self.steps, self.guidance, args.seed, args.capture]).encode())
        self.settings = digest.hexdigest()[:16]
        self.title = (f"{args.samples} samples per configuration, DDIM {self.steps} steps, guidance {self.guidance}, "
                      f"seed {args.seed}; model {args.model}; quantized layers run by {args.backend}")
        self.legend = ("PSNR and SSIM: against the unquantized (fp32) model's image from the same seed (mean over "
                       "images). Frechet distance: the classifier's 128-d features against the 10 000 real test "
                       "images. Class accuracy: the classifier's label against the conditioning class.")

    def sample(self, module, count: int | None = None) -> np.ndarray:
        """Images [n, 28, 28] in [-1, 1] of the first `count` (default all) labels."""
        labels = self.labels if count is None else self.labels[:count]
        return dit_sampling.sample(module, labels, seed=self.seed, steps=self.steps, guidance=self.guidance,
                                   scheduler_config=self.scheduler).squeeze(1).numpy()

    def metrics(self, images: np.ndarray, reference: np.ndarray) -> dict:
        x = torch.from_numpy(images[:, None].astype(np.float32))
        predicted, features = fashion_classifier.predict(self.classifier, x)
        return {"psnr_db": image_metrics.mean_psnr(images, reference),
                "ssim": float(np.mean(image_metrics.ssim(images, reference))),
                "frechet_distance": image_metrics.frechet_distance(features.numpy(), self.real_features.numpy()),
                "class_accuracy": float((predicted == self.labels).float().mean())}

    @staticmethod
    def to_uint8(images: np.ndarray) -> np.ndarray:
        return dit_sampling.to_uint8(torch.from_numpy(images))
