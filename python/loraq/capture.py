"""Activation capture: what the inputs of a model's linear layers look like, for smoothing and for
output-error metrics (`loraq quantize --activations`, `loraq bench --activations`).

    from loraq.capture import capture_activations, save_activations
    stats = capture_activations(transformer, lambda: [pipe(p, num_inference_steps=20) for p in prompts])
    save_activations(stats, "stats.safetensors")       # docs/activations.md

Forward pre-hooks on the selected nn.Linear (and 1x1 nn.Conv2d) modules record, for every row (a
token, or a pixel's channels) each layer sees while run_fn runs: the per-input-channel max |x| over all rows, and a uniform sample of at most
max_rows rows (reservoir sampling, Algorithm R, with a generator per layer seeded from `seed` and
the layer's name: the same seed and the same sequence of calls give the same rows). Rows are the
input flattened to [-1, in_features], cast to float32.

Needs torch; `import loraq` alone does not import it. save_activations needs the safetensors library.
"""
from __future__ import annotations

import json
import os
import pathlib
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

__all__ = ["ActivationCapture", "LayerActivations", "capture_activations", "load_activations", "save_activations"]

PathLike = Union[str, os.PathLike]


@dataclass
class LayerActivations:
    """One layer's capture: absmax [in] (max |x| per input channel over every row seen), rows
    [k, in] (the reservoir, k = min(seen, max_rows)), seen (rows seen). float32 numpy arrays."""

    name: str
    in_features: int
    absmax: np.ndarray
    rows: np.ndarray
    seen: int = 0


@dataclass
class _Reservoir:
    in_features: int
    max_rows: int
    rng: np.random.Generator
    absmax: Any = None  # a float32 torch tensor on the layer's device
    rows: Optional[np.ndarray] = None
    seen: int = 0
    filled: int = 0

    def add(self, x: Any) -> None:
        import torch  # noqa: PLC0415

        flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        n = flat.shape[0]
        if n == 0:
            return
        batch_max = flat.abs().amax(dim=0)
        self.absmax = batch_max if self.absmax is None else torch.maximum(self.absmax, batch_max)
        if self.rows is None:
            self.rows = np.zeros((self.max_rows, self.in_features), np.float32)
        # Algorithm R over this batch's rows, numbered seen .. seen + n - 1: row t fills slot t while
        # the reservoir is not full, then replaces slot r ~ U{0..t} when r < max_rows. Slots are
        # decided on the CPU first so that only the kept rows leave the device.
        t = np.arange(self.seen, self.seen + n, dtype=np.int64)
        slots = np.where(t < self.max_rows, t, -1)
        late = t >= self.max_rows
        if late.any():
            r = self.rng.integers(0, t[late] + 1)
            slots[late] = np.where(r < self.max_rows, r, -1)
        keep = np.nonzero(slots >= 0)[0]
        if keep.size:
            # A slot drawn twice in one batch keeps the later row, as the sequential algorithm does.
            order = keep[::-1]
            _, first = np.unique(slots[order], return_index=True)
            chosen = np.sort(order[first])
            picked = flat[torch.from_numpy(chosen).to(flat.device)].cpu().numpy()
            self.rows[slots[chosen]] = picked
        self.seen += n
        self.filled = min(self.seen, self.max_rows)


def _layer_seed(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


class ActivationCapture:
    """A context manager: hooks on entry, removed on exit; `stats` holds the captures so far.

        with ActivationCapture(transformer, layers=None, max_rows=256, seed=0) as cap:
            run_pipeline()
        stats = cap.stats

    layers: None (every nn.Linear and 1x1 nn.Conv2d), module paths (or "PATH.weight" names), or recipe= a recipe file
    whose layer selection picks them (as loraq.torch.quantize_module does)."""

    def __init__(self, module: Any, layers: Optional[Iterable[str]] = None, max_rows: int = 256, seed: int = 0, *,
                 recipe: Optional[PathLike] = None) -> None:
        from . import torch as lt  # noqa: PLC0415  (needs torch)

        if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
            raise ValueError(f"capture_activations: max_rows must be an integer >= 1, got {max_rows!r}")
        if recipe is not None:
            self.modules = lt._selected_linears(module, recipe, layers, "capture_activations")
        else:
            linears = lt.linear_layers(module)
            if layers is None:
                self.modules = linears
            else:
                self.modules = {}
                for name in ([layers] if isinstance(layers, str) else layers):
                    path = lt._strip_weight(name)
                    if path not in linears:
                        raise ValueError(f"capture_activations: layer '{path}' is not an nn.Linear or 1x1 nn.Conv2d of the module")
                    self.modules[path] = linears[path]
            if not self.modules:
                raise ValueError("capture_activations: the module has no nn.Linear or 1x1 nn.Conv2d to capture")
        self.max_rows, self.seed = max_rows, seed
        self._reservoirs = {p: _Reservoir(lt._features(m)[1], max_rows, _layer_seed(seed, p))
                            for p, m in self.modules.items()}
        self._handles: list = []

    def _hook(self, path: str) -> Callable:
        from . import torch as lt  # noqa: PLC0415
        reservoir = self._reservoirs[path]

        def hook(mod: Any, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input")
            if x is None:
                raise ValueError(f"capture_activations: layer '{path}' was called without an input tensor")
            reservoir.add(x.movedim(1, -1) if x.ndim == 4 and lt._is_pointwise_conv(mod) else x)  # pixels as rows

        return hook

    def __enter__(self) -> "ActivationCapture":
        for path, m in self.modules.items():
            self._handles.append(m.register_forward_pre_hook(self._hook(path), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def stats(self) -> dict[str, LayerActivations]:
        """{module path: LayerActivations} for every layer that saw at least one row."""
        out = {}
        for path, r in self._reservoirs.items():
            if r.seen == 0:
                continue
            out[path] = LayerActivations(path, r.in_features, r.absmax.cpu().numpy().astype(np.float32),
                                         r.rows[: r.filled].copy(), r.seen)
        return out


def capture_activations(module: Any, run_fn: Callable[[], Any], layers: Optional[Iterable[str]] = None,
                        max_rows: int = 256, seed: int = 0, *,
                        recipe: Optional[PathLike] = None) -> dict[str, LayerActivations]:
    """Runs run_fn() (the user's pipeline over prompts or class labels and timesteps) with hooks on the
    selected nn.Linear and 1x1 nn.Conv2d modules of `module` and returns {module path:
    LayerActivations}. A selected layer that never ran is an error naming it (a capture file missing a layer fails later, in the CLI)."""
    with ActivationCapture(module, layers, max_rows, seed, recipe=recipe) as cap:
        run_fn()
    stats = cap.stats
    missing = [p for p in cap.modules if p not in stats]
    if missing:
        raise ValueError(f"capture_activations: {len(missing)} selected layer(s) saw no input while run_fn ran: "
                         f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return stats


def save_activations(stats: Mapping[str, LayerActivations], path: PathLike) -> None:
    """Writes docs/activations.md's file: P.input_rows [n, in] and P.input_absmax [in], float32, tensors
    sorted by name, with metadata loraq.capture = {"rows_seen": {P: n}}. Written under a temporary
    name and renamed. NaN or Inf refused (ValueError naming the tensor and index)."""
    try:
        from safetensors.numpy import save_file  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("save_activations needs the safetensors library (pip install safetensors)") from e
    if not stats:
        raise ValueError("save_activations: no layers to save")
    tensors, seen = {}, {}
    for name, s in stats.items():
        prefix = name[: -len(".weight")] if name.endswith(".weight") else name
        rows = np.ascontiguousarray(s.rows, dtype=np.float32)
        absmax = np.ascontiguousarray(s.absmax, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] < 1 or absmax.shape != (rows.shape[1],):
            raise ValueError(f"save_activations: layer '{prefix}': rows {rows.shape} and absmax {absmax.shape} do not "
                             f"form [n >= 1, in] and [in]")
        for tname, t in ((f"{prefix}.input_rows", rows), (f"{prefix}.input_absmax", absmax)):
            bad = np.argwhere(~np.isfinite(t))
            if bad.size:
                raise ValueError(f"save_activations: {tname} holds a non-finite value at {bad[0].tolist()}")
            tensors[tname] = t
        seen[prefix] = int(s.seen)
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(dict(sorted(tensors.items())), str(tmp), metadata={"loraq.capture": json.dumps({"rows_seen": seen},
                                                                                             sort_keys=True)})
    os.replace(tmp, path)


def load_activations(path: PathLike) -> dict[str, LayerActivations]:
    """Reads an activation file (docs/activations.md) back: {P: LayerActivations} for every P with
    P.input_rows (absmax is P.input_absmax, or recomputed from the rows when absent)."""
    try:
        from safetensors import safe_open  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("load_activations needs the safetensors library (pip install safetensors)") from e
    import torch  # noqa: PLC0415  (F16 and BF16 tensors: read through torch, widened exactly)

    out = {}
    where = os.fspath(path)
    with safe_open(where, framework="pt") as f:
        try:
            meta = json.loads((f.metadata() or {}).get("loraq.capture", "{}"))
            seen = meta.get("rows_seen", {}) if isinstance(meta, dict) else None
            if not isinstance(seen, dict):
                raise ValueError("rows_seen is not an object")
        except ValueError as e:  # json.JSONDecodeError is one
            raise ValueError(f"load_activations: {where}: malformed loraq.capture metadata ({e})") from None
        keys = set(f.keys())
        for key in sorted(keys):
            if not key.endswith(".input_rows"):
                continue
            prefix = key[: -len(".input_rows")]
            rows = f.get_tensor(key).to(torch.float32).numpy()
            if rows.ndim != 2 or rows.shape[0] < 1:
                raise ValueError(f"load_activations: {where}: tensor '{key}' has shape {list(rows.shape)}, "
                                 f"expected [n >= 1, in_features]")
            absmax = f.get_tensor(prefix + ".input_absmax").to(torch.float32).numpy() \
                if prefix + ".input_absmax" in keys else np.abs(rows).max(axis=0)
            if absmax.shape != (rows.shape[1],):
                raise ValueError(f"load_activations: {where}: tensor '{prefix}.input_absmax' has shape "
                                 f"{list(absmax.shape)}, expected [{rows.shape[1]}] as its input_rows")
            count = seen.get(prefix, rows.shape[0])
            if not isinstance(count, int) or isinstance(count, bool) or count < rows.shape[0]:
                raise ValueError(f"load_activations: {where}: rows_seen of '{prefix}' is {count!r}, expected an "
                                 f"integer >= its {rows.shape[0]} rows")
            out[prefix] = LayerActivations(prefix, rows.shape[1], absmax, rows, count)
    return out
