"""The Fashion-MNIST classifier behind the end-to-end evaluation: class accuracy of generated images,
and its 128-d penultimate features for a Frechet distance (the Inception network behind FID cannot be
downloaded on these machines). Deterministic, on the CPU in a few minutes.

    python tools/fashion_classifier.py --out models/fashion-classifier      # train, test, save
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fashion_mnist  # noqa: E402


class Classifier(nn.Module):
    """Two conv blocks and two linear layers; features() is the 128-d input of the last layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # x in [-1, 1], [n, 1, 28, 28]
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]


def load(folder: pathlib.Path) -> Classifier:
    from safetensors.torch import load_file
    model = Classifier()
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes [n] and features [n, 128] of images in [-1, 1]."""
    model.eval()
    labels, feats = [], []
    for i in range(0, len(x), batch):
        f = model.features(x[i:i + batch])
        feats.append(f)
        labels.append(model.head(f).argmax(1))
    return torch.cat(labels), torch.cat(feats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/fashion-classifier")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    images, labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    x, y = to_input(images), torch.from_numpy(labels.astype(np.int64))
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(y) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    history = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.from_numpy(np.random.default_rng([args.seed, epoch]).permutation(len(y)))
        total = 0.0
        for k in range(len(y) // 128):
            i = order[k * 128:(k + 1) * 128]
            batch = x[i]
            batch = torch.where(torch.rand(len(i), 1, 1, 1) < 0.5, batch, batch.flip(3))  # mirror: clothes are symmetric
            loss = nn.functional.cross_entropy(model(batch), y[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        predicted, _ = predict(model, to_input(test_images))
        accuracy = float((predicted.numpy() == test_labels).mean())
        history.append({"epoch": epoch + 1, "loss": total / (len(y) // 128), "test_accuracy": accuracy})
        print(history[-1], flush=True)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(out / "model.safetensors"))
    (out / "training.json").write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "history": history}, indent=1) + "\n")
    (out / "README.md").write_text(
        f"# fashion-classifier\n\nA small CNN (tools/fashion_classifier.py) trained by `python tools/fashion_classifier.py` "
        f"({args.epochs} epochs, seed {args.seed}, AdamW one-cycle, horizontal flips) on Fashion-MNIST's 60 000 training "
        f"images. Accuracy on the 10 000 test images: {history[-1]['test_accuracy']:.4f}. The evaluation uses it to label "
        "generated images and its 128-d penultimate features for a Frechet distance.\n")
    print(f"test accuracy {history[-1]['test_accuracy']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
