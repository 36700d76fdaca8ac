"""Trains the project's embedded default model: a class-conditional diffusion transformer on
Fashion-MNIST, built from diffusers' own DiTTransformer2DModel (so its layer names and blocks are
real DiT ones), deterministic, on the CPU (or a CUDA GPU when present), resumable.

    python tools/train_dit.py --work out/train-dit --steps 10000          # resumes from out/train-dit
    python tools/train_dit.py --work out/train-dit --export models/fashion-dit

Every --checkpoint-every steps the whole state (weights, EMA, optimizer, step, RNG states, losses)
goes to WORK/state.pt, written to a temporary name and renamed, so a killed run resumes exactly: the
same seed and step count give the same weights whether or not the run was interrupted (on one
device and thread count). --export writes the EMA weights as a diffusers folder (transformer/ and
scheduler/), a loss curve, a sample grid and a model card.
"""
import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import fashion_mnist  # noqa: E402

# The model: width 256 (4 heads of 64), 6 blocks, 4x4 patches (49 tokens per 28x28 image).
MODEL = dict(num_attention_heads=4, attention_head_dim=64, in_channels=1, out_channels=1, num_layers=6,
             sample_size=28, patch_size=4, num_embeds_ada_norm=10, norm_type="ada_norm_zero")
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                 clip_sample=False)


def make_model():
    from diffusers import DiTTransformer2DModel
    return DiTTransformer2DModel(**MODEL)


def make_training_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(**SCHEDULER)


def atomic_save(obj, path: pathlib.Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def batches(labels_count: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's image order: a permutation fixed by (seed, epoch), cut into whole batches."""
    order = np.random.default_rng([seed, epoch]).permutation(labels_count)
    return order[: len(order) // batch * batch].reshape(-1, batch)


def train(args):
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    images, labels = fashion_mnist.load("train")
    x_all = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]  # [-1, 1], [n, 1, 28, 28]
    y_all = torch.from_numpy(labels.astype(np.int64))

    model = make_model().to(device)
    ema = make_model().to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    scheduler = make_training_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)

    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"
    # segments: [[first step, --steps], ...]. The learning-rate schedule depends on --steps, so a
    # run continued with another --steps records where its schedule changed; the model card lists
    # the commands that reproduce the weights.
    step, losses, segments = 0, [], [[0, args.steps]]
    config = {"model": MODEL, "scheduler": SCHEDULER, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "ema": args.ema, "device": device.type}
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["config"] != config:
            raise SystemExit(f"{state_path}: made with another configuration ({state['config']}); use another --work")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
        # States written before segments were recorded were all made with the default --steps 10000.
        segments = state.get("segments", [[0, 10000]])
        if segments[-1][1] != args.steps and step < args.steps:
            segments.append([step, args.steps])
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {step}", flush=True)

    per_epoch = len(y_all) // args.batch
    model.train()
    start, window = time.time(), []
    stop = min(args.steps, args.stop_at or args.steps)
    while step < stop:
        epoch, k = divmod(step, per_epoch)
        index = torch.from_numpy(batches(len(y_all), args.batch, args.seed, epoch)[k])
        x0, y = x_all[index].to(device), y_all[index].to(device)
        t = torch.randint(0, SCHEDULER["num_train_timesteps"], (args.batch,), device=device)
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        # The class is dropped 10% of the time inside diffusers' label embedding (class index 10 is
        # the null class), which is what classifier-free guidance needs at sampling time.
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        # Linear warm-up over the first 500 steps, then cosine decay to 10% at --steps.
        progress = min(1.0, step / max(1, args.steps))
        lr = args.lr * min(1.0, (step + 1) / 500) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(args.ema).add_(pm, alpha=1 - args.ema)
        step += 1
        window.append(loss.item())
        if step % 50 == 0:
            losses.append([step, float(np.mean(window))])
            rate = 50 / (time.time() - start)
            print(f"step {step}/{args.steps} loss {losses[-1][1]:.4f} lr {lr:.2e} {rate:.2f} steps/s", flush=True)
            window, start = [], time.time()
        if step % args.checkpoint_every == 0 or step == stop:
            atomic_save({"config": config, "model": model.state_dict(), "ema": ema.state_dict(),
                         "optimizer": optimizer.state_dict(), "step": step, "losses": losses,
                         "segments": segments, "rng": torch.get_rng_state()}, state_path)
    print(f"trained {step} steps; state in {state_path}", flush=True)


def export(args):
    """The EMA weights as a diffusers folder, with a loss curve, a sample grid and a model card."""
    from diffusers import DDIMScheduler
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import dit_sampling  # noqa: PLC0415

    state = torch.load(pathlib.Path(args.work) / "state.pt", map_location="cpu", weights_only=False)
    out = pathlib.Path(args.export)
    model = make_model()
    model.load_state_dict(state["ema"])
    # Stored in fp16: the paper's reference is the 16-bit model, and the file is half the size. The
    # samples below come from the fp16 weights, computed in fp32 as the evaluation does.
    model.to(torch.float16).save_pretrained(out / "transformer", safe_serialization=True)
    model.to(torch.float32)
    DDIMScheduler(**SCHEDULER).save_pretrained(out / "scheduler")
    losses = np.array(state["losses"])
    (out / "loss.json").write_text(json.dumps(state["losses"]) + "\n")
    labels = torch.arange(10).repeat_interleave(8)
    samples = dit_sampling.sample(model, labels, seed=0, steps=50, guidance=args.guidance)
    dit_sampling.save_grid(samples, out / "samples.png", columns=8)
    dit_sampling.save_loss_curve(losses, out / "loss.svg")
    params = sum(p.numel() for p in model.parameters())
    segments = state.get("segments", [[0, 10000]])
    ends = [s[0] for s in segments[1:]] + [state["step"]]
    commands = "\n".join(f"python tools/train_dit.py --work out/train-dit --steps {steps}"
                         + (f" --stop-at {end}" if end < steps else "")
                         for (first, steps), end in zip(segments, ends))
    (out / "README.md").write_text(f"""# fashion-dit: loraq's embedded default model

A class-conditional diffusion transformer, diffusers' `DiTTransformer2DModel`
({params / 1e6:.2f} M parameters: width {MODEL['num_attention_heads'] * MODEL['attention_head_dim']},
{MODEL['num_layers']} blocks, 4x4 patches of 28x28 images, adaLN-zero class and timestep conditioning,
class index 10 = no class), trained by `tools/train_dit.py` on the 60 000 training images of
Fashion-MNIST (Debian package dataset-fashion-mnist) for {state['step']} steps of batch
{state['config']['batch']} (AdamW, lr {state['config']['lr']}, warm-up and cosine decay, EMA
{state['config']['ema']}), noise prediction on a cosine schedule of 1000 steps, 10% class dropout for
classifier-free guidance, on {state['config']['device']}. The weights are stored in fp16.

- Loss (mean squared error of the predicted noise, per 50 steps): `loss.json`, plotted in `loss.svg`;
  last value {losses[-1][1]:.4f}.
- `samples.png`: 8 samples per class (rows: {', '.join(fashion_mnist.CLASSES)}), DDIM 50 steps,
  guidance {args.guidance}, seed 0.
- Weights: the EMA weights, `transformer/diffusion_pytorch_model.safetensors`; sampler: `scheduler/`.

The learning rate decays towards 10% at `--steps`. These commands, run in order, reproduce the
weights bit for bit on the same kind of device (each resumes the state the previous one left):

```sh
{commands}
```
""")
    print(f"wrote {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="out/train-dit", help="folder of the resumable training state")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop (and checkpoint) after this step, keeping the schedule of --steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--export", help="write the trained model as a diffusers folder here instead of training")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of the exported samples")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    export(args) if args.export else train(args)


if __name__ == "__main__":
    main()
