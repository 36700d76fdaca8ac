"""loraq.torch and loraq.capture on a small diffusers transformer block (hidden 128, PixArt-Sigma's
tensor names): QuantizedLinear against a float64 re-implementation written here, the output error
ranking W16A16 < W4A8 < W4A4, load_quantized after `loraq quantize` against quantize_module,
activation capture against torch's own reductions and through the CLI, and bad input.

Qa in the references is loraq.fake_quant on float32 numpy arrays (test_bindings.py checks it bit for
bit against an ml_dtypes reference); the matmuls here are numpy float64, independent of torch."""
import json
import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: loraq.torch NOT TESTED")
loraq = pytest.importorskip("loraq", reason="the loraq Python package is not installed (scripts/test.sh runs "
                                            "`pip install .`): loraq.torch NOT TESTED")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors library is not installed")
attention = pytest.importorskip("diffusers.models.attention", reason="diffusers is not installed")
import loraq.torch as lt  # noqa: E402
from loraq.capture import ActivationCapture, capture_activations, load_activations, save_activations  # noqa: E402

SEED = 20261206
HIDDEN, CONTEXT, TOKENS, CONTEXT_TOKENS, BATCH = 128, 64, 48, 16, 2
LAYERS = [f"transformer_blocks.0.{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")] + \
    ["transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2"]

# The same weight quantization (LoRaQ, mxint4 residual, mxint8 branch at rank 16) with 8- or 4-bit
# activations on both branches, and a 16-bit baseline: fp16 weights and fp16 activations.
LORAQ = """method: loraq
residual: {{format: mxint4}}
branch: {{format: mxint8, rank: 16}}
params: {{steps: 60, rotation_steps: 30, lr: 1.0e-3}}
{activations}
layers: {{preset: pixart-sigma}}
"""
RECIPES = {
    "w16a16": "method: rtn\nresidual: {format: fp16}\nactivations: {residual: fp16}\nlayers: {preset: pixart-sigma}\n",
    "w4a8": LORAQ.format(activations="activations: {residual: mxint8, branch: mxint8}"),
    "w4a4": LORAQ.format(activations="activations: {residual: mxint4, branch: mxint4}"),
}


class Blocks(torch.nn.Module):
    """One diffusers BasicTransformerBlock under PixArt-Sigma's names (transformer_blocks.0.*)."""

    def __init__(self, hidden=HIDDEN):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([attention.BasicTransformerBlock(
            hidden, num_attention_heads=4, attention_head_dim=hidden // 4, cross_attention_dim=CONTEXT)])

    def forward(self, x, context):
        return self.transformer_blocks[0](x, encoder_hidden_states=context)


def make_model(hidden=HIDDEN):
    torch.manual_seed(SEED)
    return Blocks(hidden).eval()


def make_inputs(seed=SEED):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, TOKENS, HIDDEN, generator=g), torch.randn(BATCH, CONTEXT_TOKENS, CONTEXT, generator=g))


def relative_error(y, reference):
    return float((y.double() - reference.double()).norm() / reference.double().norm())


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    paths = {}
    for name, text in RECIPES.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(f"name: {name}\n" + text)
    return paths


@pytest.fixture(scope="module")
def quantized(recipes):
    """{recipe: (model, report)}: the block quantized by quantize_module with each recipe."""
    out = {}
    for name, path in recipes.items():
        model = make_model()
        out[name] = (model, lt.quantize_module(model, path))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in make_model().state_dict().items()}, str(path))
    return path


# ---- QuantizedLinear against a float64 re-implementation ---------------------------------------------------

def reference_forward(x, residual, down, up, bias, smooth, qa1, qa2, shift):
    """Y = (Qa1(U) - c) P^T + ((Qa2(U) - c) D^T) U^T + b with U = X / s + c, in float64 (Qa on float32
    values by loraq.fake_quant). c: None, a number or "token" (c_t = max(0, -min_j x_tj))."""
    h = x.reshape(-1, x.shape[-1]).astype(np.float32)
    if smooth is not None:
        h = (h / smooth[None, :]).astype(np.float32)
    c = None
    if shift == "token":
        c = np.maximum(-h.min(axis=1, keepdims=True), np.float32(0)).astype(np.float32)
    elif shift is not None:
        c = np.full((h.shape[0], 1), shift, np.float32)

    def qa(fmt):
        if fmt is None:
            return h.astype(np.float64)
        shifted = h if c is None else (h + c).astype(np.float32)
        q = loraq.fake_quant(shifted, fmt).astype(np.float64)
        return q if c is None else q - c.astype(np.float64)

    y = qa(qa1) @ residual.astype(np.float64).T
    if down is not None:
        y += (qa(qa2) @ down.astype(np.float64).T) @ up.astype(np.float64).T
    if bias is not None:
        y += bias.astype(np.float64)
    return y, h


def assert_matches_reference(y, reference, bound_terms, what):
    """|y - ref| <= 2 n u (|A||B| summed over the products) + tiny: float32 accumulation bound."""
    err = np.abs(y.reshape(reference.shape).astype(np.float64) - reference)
    bound = bound_terms * 2.0 ** -22 + 1e-30
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"{what}: error {err[worst]:.3e} above the float32 bound {bound[worst]:.3e} at {worst}"


def magnitude_terms(h, residual, down, up, bias):
    n = h.shape[1] + (down.shape[0] if down is not None else 0) + 4
    a = np.abs(h).astype(np.float64) * 2 + 1  # the quantized input is within a step of h (shift included)
    terms = a @ np.abs(residual).T
    if down is not None:
        terms += (a @ np.abs(down).T) @ np.abs(up).T
    if bias is not None:
        terms += np.abs(bias)
    return n * terms


def test_quantized_linears_match_float64_reference(quantized):
    model, report = quantized["w4a8"]
    x, context = make_inputs()
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, p=p: inputs.__setitem__(p, args[0].detach().clone()))
             for p, m in model.named_modules() if isinstance(m, lt.QuantizedLinear)]
    outputs = {}
    hooks += [m.register_forward_hook(lambda mod, args, out, p=p: outputs.__setitem__(p, out.detach().clone()))
              for p, m in model.named_modules() if isinstance(m, lt.QuantizedLinear)]
    with torch.no_grad():
        model(x, context)
    for h in hooks:
        h.remove()
    assert sorted(inputs) == sorted(LAYERS)
    assert [r["name"] for r in report["layers"]] == [f"{p}.weight" for p in LAYERS]
    for path in LAYERS:
        m = model.get_submodule(path)
        assert (m.residual_activation, m.branch_activation, m.rank) == ("mxint8", "mxint8", 16)
        arrays = [None if t is None else t.numpy() for t in (m.residual, m.down, m.up, m.bias, m.smooth)]
        ref, h = reference_forward(inputs[path].numpy(), *arrays, "mxint8", "mxint8", None)
        assert_matches_reference(outputs[path].numpy(), ref, magnitude_terms(h, *arrays[:4]), path)


@pytest.mark.parametrize("shift", [None, 0.171875, "token"])
@pytest.mark.parametrize("formats", [("mxint4", "mxfp8_e4m3"), ("sint4", None), (None, "mxfp4")])
def test_smoothing_and_unsigned_shift_match_reference(shift, formats):
    rng = np.random.default_rng(SEED)
    out_f, in_f, rank = 48, 96, 8
    residual = loraq.fake_quant(rng.standard_normal((out_f, in_f)).astype(np.float32), "mxint4")
    down = loraq.fake_quant(rng.standard_normal((rank, in_f)).astype(np.float32) * 0.1, "mxint8")
    up = loraq.fake_quant(rng.standard_normal((out_f, rank)).astype(np.float32) * 0.1, "mxint8")
    bias = rng.standard_normal(out_f).astype(np.float32)
    smooth = np.exp(rng.uniform(-1, 1, in_f)).astype(np.float32)
    # GELU outputs (minimum about -0.17), with outlier channels, as ff.net.2 sees them
    x = torch.nn.functional.gelu(torch.from_numpy(rng.standard_normal((3, 10, in_f)).astype(np.float32) * 2)).numpy()
    x[..., 5] *= 20
    layer = lt.QuantizedLinear(residual, down, up, bias, smooth, residual_activation=formats[0],
                               branch_activation=formats[1], unsigned_shift=shift, name="probe")
    y = layer(torch.from_numpy(x)).numpy()
    ref, h = reference_forward(x, residual, down, up, bias, smooth, *formats, shift)
    assert_matches_reference(y, ref, magnitude_terms(h, residual, down, up, bias), f"shift {shift}, {formats}")
    # dtype: computed in float32, returned in the input's
    assert layer(torch.from_numpy(x).to(torch.bfloat16)).dtype == torch.bfloat16


# ---- output error ranking ---------------------------------------------------------------------------------

def test_output_error_ranks_w16a16_below_w4a8_below_w4a4(quantized):
    x, context = make_inputs()
    with torch.no_grad():
        reference = make_model()(x, context)
        errors = {name: relative_error(model(x, context), reference) for name, (model, _) in quantized.items()}
    print("block output relative error:", ", ".join(f"{k} {v:.3e}" for k, v in errors.items()))
    assert 0 < errors["w16a16"] < errors["w4a8"] < errors["w4a4"], errors
    assert errors["w16a16"] < 1e-3 and errors["w4a8"] < 0.1, errors


# ---- load_quantized after `loraq quantize` -----------------------------------------------------------------

def test_load_quantized_equals_quantize_module(quantized, recipes, checkpoint, run_loraq, tmp_path):
    run_loraq("quantize", checkpoint, "--recipe", recipes["w4a8"], "-o", tmp_path / "w4a8", "--threads", "2")
    loaded = make_model()
    assert sorted(lt.load_quantized(loaded, tmp_path / "w4a8")) == sorted(LAYERS)
    direct, _ = quantized["w4a8"]
    for path in LAYERS:
        a, b = loaded.get_submodule(path), direct.get_submodule(path)
        assert (a.residual_activation, a.branch_activation) == (b.residual_activation, b.branch_activation), path
        for buffer in ("residual", "down", "up", "bias"):
            ta, tb = getattr(a, buffer), getattr(b, buffer)
            assert (ta is None and tb is None) or torch.equal(ta, tb), f"{path}.{buffer} differs"
    x, context = make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, context), direct(x, context))


def test_intermediate_activation_through_checkpoint(checkpoint, run_loraq, tmp_path):
    """activations.intermediate (Qt on the branch's T) from the recipe to the checkpoint's metadata
    (read with the safetensors library) to load_quantized, and both backends against a float64
    reference that applies Qt: to the kernel's own float32 T (LinearKernel.intermediate) for
    backend="kernel", to torch's float32 T for "fake_quant" (quantizing a float64 T instead could
    round a value the other way, a whole step of Qt)."""
    recipe = tmp_path / "w4a8t.yaml"
    recipe.write_text("name: w4a8t\n" + LORAQ.format(
        activations="activations: {residual: mxint8, branch: mxint8, intermediate: mxint4}"))
    run_loraq("quantize", checkpoint, "--recipe", recipe, "-o", tmp_path / "q", "--threads", "2")
    (written,) = (tmp_path / "q").glob("*.safetensors")
    with safetensors_torch.safe_open(str(written), "pt") as f:
        table = json.loads(f.metadata()["loraq.layers"])
    assert {e["name"]: e.get("intermediate_activation") for e in table} == {f"{p}.weight": "mxint4" for p in LAYERS}
    path = "transformer_blocks.0.ff.net.2"
    layers = {}
    for backend in ("fake_quant", "kernel"):
        model = make_model()
        lt.load_quantized(model, tmp_path / "q", backend=backend)
        layers[backend] = model.get_submodule(path)
        assert layers[backend].intermediate_activation == "mxint4"
    m = layers["kernel"]
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((37, m.in_features)).astype(np.float32)
    h = x if m.smooth is None else (x / m.smooth.numpy()[None, :]).astype(np.float32)
    res, down, up = (t.numpy().astype(np.float64) for t in (m.residual, m.down, m.up))
    bias = np.zeros(m.out_features) if m.bias is None else m.bias.numpy().astype(np.float64)
    qa2 = loraq.fake_quant(h, "mxint8")  # Qa1 too: both branches take mxint8
    base = qa2.astype(np.float64) @ res.T + bias
    t_kernel = m._kernel.intermediate(x)
    t_torch = torch.nn.functional.linear(torch.from_numpy(qa2), layers["fake_quant"].down).numpy()
    t64 = qa2.astype(np.float64) @ down.T
    n = m.in_features + m.rank + 4
    for t in (t_kernel, t_torch):  # both float32 T within the accumulation bound of T in float64
        assert np.all(np.abs(t - t64) <= n * 2.0 ** -23 * (np.abs(qa2) @ np.abs(down).T) + 1e-30)
    terms = n * (np.abs(qa2) @ np.abs(res).T + np.abs(bias))
    for backend, t in (("kernel", t_kernel), ("fake_quant", t_torch)):
        qt = loraq.fake_quant(np.ascontiguousarray(t, dtype=np.float32), "mxint4").astype(np.float64)
        y = layers[backend](torch.from_numpy(x)).numpy()
        assert_matches_reference(y, base + qt @ up.T, terms + n * (np.abs(qt) @ np.abs(up).T), backend)
        # Without Qt the reference is outside that bound almost everywhere: Qt was applied.
        err = np.abs(y - (base + t64 @ up.T))
        assert np.mean(err > (terms + n * np.abs(t64) @ np.abs(up).T) * 2.0 ** -22) > 0.5, backend


def test_load_quantized_errors_name_the_layer(recipes, checkpoint, run_loraq, tmp_path):
    run_loraq("quantize", checkpoint, "--recipe", recipes["w16a16"], "-o", tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn1\.to_k\.weight.*\[128, 128\].*\[96, 96\]"):
        lt.load_quantized(make_model(hidden=96), tmp_path / "q.safetensors")
    other = make_model()
    other.transformer_blocks[0].attn2 = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn2\.to_k\.weight.*does not exist"):
        lt.load_quantized(other, tmp_path / "q.safetensors")
    intact = make_model()
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        lt.load_quantized(intact, checkpoint)
    assert not any(isinstance(m, lt.QuantizedLinear) for m in intact.modules())
    # A hostile layer table (rewritten with the safetensors library): loraq.Error naming the layer and
    # the value, from the C++ reader `loraq export` uses, and no module swapped.
    with safetensors_torch.safe_open(str(tmp_path / "q.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    table = json.loads(metadata["loraq.layers"])
    first = re.escape(table[0]["name"])
    hostile = {
        "rank 1e30": ([{**table[0], "rank": 1e30}] + table[1:], first + r"' of loraq\.layers: rank: expected an integer"),
        "shape 2.5": ([{**table[0], "shape": [128, 2.5]}] + table[1:], r"shape: expected an integer in \[1, 16777216\], got 2\.5"),
        "listed twice": (table + table[:1], first + r"' of loraq\.layers is listed twice"),
        "no rank": ([{k: v for k, v in table[0].items() if k != "rank"}] + table[1:], r"malformed loraq\.layers.*rank"),
    }
    for case, (bad, message) in hostile.items():
        safetensors_torch.save_file(stored, str(tmp_path / "bad.safetensors"),
                                    metadata={**metadata, "loraq.layers": json.dumps(bad)})
        with pytest.raises(loraq.Error, match=r"load_quantized: .*bad\.safetensors: .*" + message):
            lt.load_quantized(intact, tmp_path / "bad.safetensors")
        assert not any(isinstance(m, lt.QuantizedLinear) for m in intact.modules()), case
    # nvfp4's per-tensor scale must be one value (an empty one was an IndexError).
    nvfp4 = tmp_path / "nvfp4.yaml"
    nvfp4.write_text("name: n\nmethod: rtn\nresidual: {format: nvfp4}\nlayers: {preset: pixart-sigma}\n")
    run_loraq("quantize", checkpoint, "--recipe", nvfp4, "-o", tmp_path / "n.safetensors")
    stored = safetensors_torch.load_file(str(tmp_path / "n.safetensors"))
    with safetensors_torch.safe_open(str(tmp_path / "n.safetensors"), "pt") as f:
        metadata = f.metadata()
    (key,) = [k for k in sorted(stored) if k.endswith(".wscale_global")][:1]
    safetensors_torch.save_file({**stored, key: torch.zeros(0)}, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=re.escape(key) + r" holds 0 values, expected 1"):
        lt.load_quantized(intact, tmp_path / "bad.safetensors")


# ---- activation capture -------------------------------------------------------------------------------

def run_prompts(model, n=3):
    def run():
        with torch.no_grad():
            for i in range(n):
                model(*make_inputs(SEED + i))
    return run


def test_capture_absmax_and_reservoir(tmp_path):
    model = make_model()
    seen = {}
    hooks = [model.get_submodule(p).register_forward_pre_hook(
        lambda mod, args, p=p: seen.setdefault(p, []).append(args[0].reshape(-1, args[0].shape[-1]).clone()))
        for p in LAYERS]
    stats = capture_activations(model, run_prompts(model), max_rows=40, seed=7)
    for h in hooks:
        h.remove()
    assert sorted(stats) == sorted(p for p, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    for p in LAYERS:
        every = torch.cat(seen[p])
        assert torch.equal(torch.from_numpy(stats[p].absmax), every.abs().amax(dim=0)), p
        assert stats[p].seen == every.shape[0] and stats[p].rows.shape == (40, every.shape[1])
        # every kept row is one of the layer's input rows, none twice
        rows = stats[p].rows
        index = {r.tobytes(): i for i, r in enumerate(every.numpy())}
        assert all(r.tobytes() in index for r in rows), p
        assert len({r.tobytes() for r in rows}) == len(rows), p
    again = capture_activations(model, run_prompts(model), max_rows=40, seed=7)
    other = capture_activations(model, run_prompts(model), max_rows=40, seed=8)
    for p in LAYERS:
        assert np.array_equal(again[p].rows, stats[p].rows), f"{p}: the same seed gave other rows"
    assert any(not np.array_equal(other[p].rows, stats[p].rows) for p in LAYERS)
    # fewer rows than max_rows: all of them, in order
    few = capture_activations(model, run_prompts(model, 1), layers=[LAYERS[0]], max_rows=10_000)
    assert np.array_equal(few[LAYERS[0]].rows, seen[LAYERS[0]][0].numpy())
    save_activations(stats, tmp_path / "stats.safetensors")
    with open(tmp_path / "stats.safetensors", "rb") as f:  # the file's own header, read without loraq
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    for p in LAYERS:
        assert header[f"{p}.input_rows"] == {**header[f"{p}.input_rows"], "dtype": "F32",
                                             "shape": [40, stats[p].in_features]}
        assert header[f"{p}.input_absmax"]["shape"] == [stats[p].rows.shape[1]]
    back = load_activations(tmp_path / "stats.safetensors")
    assert all(np.array_equal(back[p].rows, stats[p].rows) and back[p].seen == stats[p].seen for p in LAYERS)


def test_load_activations_refuses_a_malformed_file(tmp_path):
    """A hand-made or damaged activation file gives a ValueError naming the file and tensor, not an
    IndexError or a JSONDecodeError from deep inside."""
    good = {"a.input_rows": torch.ones(4, 8), "a.input_absmax": torch.ones(8)}
    cases = {
        "rows 1-D": ({"a.input_rows": torch.ones(8)}, {}, r"tensor 'a\.input_rows' has shape \[8\], expected \[n >= 1"),
        "no rows": ({"a.input_rows": torch.ones(0, 8)}, {}, r"tensor 'a\.input_rows' has shape \[0, 8\]"),
        "absmax length": ({**good, "a.input_absmax": torch.ones(7)}, {},
                          r"tensor 'a\.input_absmax' has shape \[7\], expected \[8\]"),
        "metadata": (good, {"loraq.capture": "{not json"}, r"malformed loraq\.capture metadata"),
        "rows_seen list": (good, {"loraq.capture": '{"rows_seen": [1]}'}, r"malformed loraq\.capture metadata"),
        "rows_seen small": (good, {"loraq.capture": '{"rows_seen": {"a": 3}}'}, r"rows_seen of 'a' is 3, expected an integer >= its 4 rows"),
    }
    for case, (tensors, metadata, message) in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.safetensors"
        safetensors_torch.save_file(tensors, str(path), metadata=metadata)
        with pytest.raises(ValueError, match=rf"load_activations: .*{path.name}: {message}"):
            load_activations(path)
    safetensors_torch.save_file(good, str(tmp_path / "good.safetensors"), metadata={"loraq.capture": '{"rows_seen": {"a": 9}}'})
    back = load_activations(tmp_path / "good.safetensors")
    assert back["a"].seen == 9 and back["a"].rows.shape == (4, 8)


def test_capture_file_read_by_cli(recipes, checkpoint, run_loraq, tmp_path):
    model = make_model()
    stats = capture_activations(model, run_prompts(model, 2), max_rows=64, recipe=recipes["w4a8"])
    assert sorted(stats) == sorted(LAYERS)
    save_activations(stats, tmp_path / "stats.safetensors")
    run_loraq("quantize", checkpoint, "--recipe", recipes["w4a8"], "-o", tmp_path / "q", "--activations",
              tmp_path / "stats.safetensors")
    rows = json.loads((tmp_path / "q" / "quantize_report.json").read_text())  # one object per layer
    cli_sqnr = {r["layer"]: r["output_sqnr_db"] for r in rows}
    assert sorted(cli_sqnr) == sorted(f"{p}.weight" for p in LAYERS)
    # quantize_module measures the same SQNR on the same rows: the C++ computes the layer's output
    # with its activation formats (methods/smoothing.cpp, quantized_output) by its own GEMMs.
    ours = lt.quantize_module(make_model(), recipes["w4a8"], activations=tmp_path / "stats.safetensors")
    for row in ours["layers"]:
        assert math.isclose(row["output_sqnr_db"], cli_sqnr[row["name"]], rel_tol=1e-6), \
            (row["name"], row["output_sqnr_db"], row["output_sqnr_db_weights"], cli_sqnr[row["name"]])
        assert row["output_sqnr_db"] < row["output_sqnr_db_weights"], row["name"]
    run_loraq("bench", checkpoint, "-o", tmp_path / "bench", "--preset", "pixart-sigma", "-c", "rtn:mxint4",
              "--activations", tmp_path / "stats.safetensors", "--no-progress")
    bench = (tmp_path / "bench" / "bench.json").read_text()
    assert "output_sqnr_db" in bench


def test_layers_in_flight_change_nothing(recipes):
    """Layers quantized on 3 threads at once (what a GPU gets by default) give the same tensors and
    the same report order as one at a time."""
    one, three = make_model(), make_model()
    report_one = lt.quantize_module(one, recipes["w4a8"], threads=1)
    report_three = lt.quantize_module(three, recipes["w4a8"], threads=1, layers_in_flight=3)
    assert [r["name"] for r in report_one["layers"]] == [r["name"] for r in report_three["layers"]]
    pairs = [(a, b) for a, b in zip(one.modules(), three.modules()) if isinstance(a, lt.QuantizedLinear)]
    assert len(pairs) == len(LAYERS)
    for a, b in pairs:
        for part in ("residual", "down", "up"):
            assert torch.equal(getattr(a, part).view(torch.int32), getattr(b, part).view(torch.int32)), (a.name, part)
    with pytest.raises(ValueError, match="layers_in_flight must be an int >= 1, got 0"):
        lt.quantize_module(make_model(), recipes["w4a8"], layers_in_flight=0)


# ---- bad input -------------------------------------------------------------------------------------------

def test_bad_input_names_it(recipes, checkpoint, run_loraq, tmp_path):
    nothing = tmp_path / "nothing.yaml"
    nothing.write_text("name: nothing\nmethod: rtn\nlayers: {preset: none, include: ['decoder.*']}\n")
    with pytest.raises(ValueError, match=r"nothing\.yaml selects no linear layer"):
        lt.quantize_module(make_model(), nothing)
    twice = make_model()
    lt.quantize_module(twice, recipes["w16a16"])
    with pytest.raises(ValueError, match=rf"selects no linear layer .*; {len(LAYERS)} layers are QuantizedLinear already"):
        lt.quantize_module(twice, recipes["w16a16"])
    model = make_model()
    with pytest.raises(loraq.Error, match=r"quantize_weight: device tpu: expected cpu, cuda or cuda:N"):
        lt.quantize_module(model, recipes["w16a16"], device="tpu")
    with pytest.raises(ValueError, match=r"layer 'transformer_blocks\.0\.attn1\.to_z' is not an nn\.Linear"):
        lt.quantize_module(model, recipes["w16a16"], layers=["transformer_blocks.0.attn1.to_z"])
    with pytest.raises(ValueError, match=r"'transformer_blocks\.0\.norm1' is not an nn\.Linear"):
        capture_activations(model, lambda: None, layers=["transformer_blocks.0.norm1"])
    assert not any(isinstance(m, lt.QuantizedLinear) for m in model.modules())
    # a capture file missing a layer: the CLI names the layer's tensor
    stats = capture_activations(model, run_prompts(model, 1), layers=LAYERS[:3], max_rows=8)
    save_activations(stats, tmp_path / "partial.safetensors")
    result = run_loraq("quantize", checkpoint, "--recipe", recipes["w16a16"], "-o", tmp_path / "q", "--activations",
                       tmp_path / "partial.safetensors", check=False)
    assert result.returncode != 0 and LAYERS[3] in result.stderr, result.stderr
    with pytest.raises(ValueError, match=rf"no rows for layer '{LAYERS[3]}'"):
        lt.quantize_module(make_model(), recipes["w16a16"], activations=stats)
    # mismatched shapes
    layer = lt.QuantizedLinear(np.zeros((4, 64), np.float32), name="probe")
    with pytest.raises(ValueError, match=r"'probe': input has 32 features"):
        layer(torch.zeros(2, 32))
    with pytest.raises(ValueError, match=r"branch shapes down \(2, 32\)"):
        lt.QuantizedLinear(np.zeros((4, 64), np.float32), np.zeros((2, 32), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(loraq.Error, match="mxfp5"):
        lt.QuantizedLinear(np.zeros((4, 64), np.float32), residual_activation="mxfp5")
    with pytest.raises(ValueError, match="unsigned_shift"):
        lt.QuantizedLinear(np.zeros((4, 64), np.float32), unsigned_shift=-1.0)


def test_selection_is_the_cli_selection(checkpoint, run_loraq, tmp_path):
    recipe = tmp_path / "globs.yaml"
    recipe.write_text("name: globs\nmethod: rtn\nresidual: {format: mxfp4}\n"
                      "layers: {preset: none, include: ['*.to_[qk].weight', '*.ff.net.[02]*.weight'],\n"
                      "         exclude: ['*attn2*']}\n")
    model = make_model()
    names = [r["name"] for r in lt.quantize_module(model, recipe)["layers"]]
    run_loraq("quantize", checkpoint, "--recipe", recipe, "-o", tmp_path / "q")
    cli = [r["layer"] for r in json.loads((tmp_path / "q" / "quantize_report.json").read_text())]
    assert sorted(names) == sorted(cli) == sorted(f"transformer_blocks.0.{p}.weight" for p in
                                                  ("attn1.to_q", "attn1.to_k", "ff.net.0.proj", "ff.net.2"))
    assert isinstance(model.get_submodule("transformer_blocks.0.ff.net.2"), lt.QuantizedLinear)
    assert isinstance(model.get_submodule("transformer_blocks.0.attn2.to_q"), torch.nn.Linear)
    with pytest.raises(ValueError, match=r"'transformer_blocks\.0\.attn2\.to_q' is not selected by the recipe"):
        lt.quantize_module(make_model(), recipe, layers=["transformer_blocks.0.attn2.to_q.weight"])


# ---- smoothing from captured activations -------------------------------------------------------------------

SVDQUANT_W4A4 = """name: svdquant-w4a4
method: svd_lowrank
residual: {{format: sint4}}
branch: {{format: fp16, rank: 16}}
activations: {{residual: sint4, branch: fp16}}
{smoothing}
layers: {{preset: pixart-sigma}}
"""


def outlier_inputs(seed):
    """Block inputs whose hidden states have a few large channels, as DiT activations do."""
    x, context = make_inputs(seed)
    x[..., ::16] *= 12
    return x, context


def test_smoothing_lowers_w4a4_output_error(tmp_path):
    """SVDQuant's W4A4 recipe with searched smoothing (alpha, beta on deepcompressor's grid, from the
    captured activations) against the same recipe without: the block's output error falls."""
    model = make_model()

    def run():
        with torch.no_grad():
            for i in range(2):
                model(*outlier_inputs(SEED + i))

    stats = capture_activations(model, run, max_rows=128, seed=1)
    x, context = outlier_inputs(SEED + 5)  # inputs the capture did not see
    with torch.no_grad():
        reference = model(x, context)
    errors, smoothed_layers = {}, {}
    for name, smoothing in (("plain", ""), ("smoothed", "smoothing: {alpha: auto, beta: auto}")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(SVDQUANT_W4A4.format(smoothing=smoothing))
        quantized_model = make_model()
        report = lt.quantize_module(quantized_model, path, activations=stats)
        smoothed_layers[name] = [r for r in report["layers"] if "smoothing_alpha" in r]
        with torch.no_grad():
            errors[name] = relative_error(quantized_model(x, context), reference)
    print("W4A4 block output relative error:", errors)
    assert smoothed_layers["plain"] == [] and len(smoothed_layers["smoothed"]) == len(LAYERS)
    assert all(r["output_sqnr_db"] > 0 for r in smoothed_layers["smoothed"])
    assert errors["smoothed"] < 0.9 * errors["plain"], errors
