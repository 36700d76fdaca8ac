"""The Python package (python/loraq, built by `pip install .`): formats against `loraq cast` and an
ml_dtypes reference written here from ../shared/FORMATS.md, pack/unpack against fake_quant and against
the independent decoder of quantized_layout.py, methods against numpy recomputations, checkpoint
wrappers against the command line, and bad input."""
import importlib.metadata
import pathlib
import re

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
loraq = pytest.importorskip("loraq", reason="the loraq Python package is not installed (scripts/test.sh runs "
                                            "`pip install .`): bindings NOT TESTED")
st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")
import quantized_layout  # noqa: E402  (tests/python: a numpy + ml_dtypes decoder of the packed layout)

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALL_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint4", "sint4", "nvfp4",
               "int8_channel", "fp16", "bf16"]
SEED = 20261205


def sample_matrix(rows, cols, seed):
    """Normal values with a magnitude per 16 columns over 2^+-20, exact halves and small integers (grid
    midpoints once scaled), a zero run and values that underflow their block's elements."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x *= np.repeat(np.exp2(rng.integers(-20, 20, size=(rows, (cols + 15) // 16))), 16, axis=1)[:, :cols].astype(np.float32)
    ties = rng.random((rows, cols)) < 0.25
    x[ties] = (rng.integers(-12, 13, size=ties.sum()) * 0.5 * np.exp2(rng.integers(-2, 3, size=ties.sum()))).astype(np.float32)
    x[1, :40] = 0.0
    x[2, 5] *= np.float32(1e-30)
    return x


# ---- an ml_dtypes reference of the block formats, from ../shared/FORMATS.md ----------------------------

MX = {  # element: (ml_dtypes type or integer grid denominator, emax_elem)
    "mxfp8_e4m3": (ml_dtypes.float8_e4m3fn, 8), "mxfp8_e5m2": (ml_dtypes.float8_e5m2, 15),
    "mxfp6_e2m3": (ml_dtypes.float6_e2m3fn, 2), "mxfp6_e3m2": (ml_dtypes.float6_e3m2fn, 4),
    "mxfp4": (ml_dtypes.float4_e2m1fn, 2), "mxint8": (64, 0), "mxint4": (4, 0),
}


def cast_saturating(values, dtype):
    """The contract saturates beyond max normal; ml_dtypes gives NaN or Inf there for some types."""
    top = np.float32(ml_dtypes.finfo(dtype).max)
    return np.clip(values, -top, top).astype(dtype).astype(np.float32)


def blocks_of(x, block):
    rows, cols = x.shape
    padded = np.zeros((rows, -(-cols // block) * block), np.float32)
    padded[:, :cols] = x
    return padded.reshape(rows, -1, block)


def reference_fake_quant(x, fmt):
    rows, cols = x.shape
    if fmt in ("fp16", "bf16"):
        return cast_saturating(x, np.float16 if fmt == "fp16" else ml_dtypes.bfloat16)
    if fmt in MX:
        element, emax = MX[fmt]
        v = blocks_of(x, 32)
        amax = np.abs(v).max(axis=-1, keepdims=True)
        _, e = np.frexp(amax)  # amax = m 2^e with m in [0.5, 1): floor(log2(amax)) = e - 1, exact from the bits
        shared = np.clip(e.astype(np.int32) - 1 - emax, -127, 127)
        scaled = np.ldexp(v, -shared)
        if isinstance(element, int):  # MX int: k / element, k rounded half to even, |k| <= 127 or 7
            top = 127 if element == 64 else 7
            q = np.clip(np.rint(scaled * element), -top, top) / np.float32(element) + np.float32(0)  # code 0 is +0
        else:
            q = cast_saturating(scaled, element)
        out = np.where(amax == 0, np.float32(0), np.ldexp(q.astype(np.float32), shared)).astype(np.float32)
        return out.reshape(rows, -1)[:, :cols]
    if fmt == "sint4":
        v = blocks_of(x, 64)
        scale = cast_saturating(np.abs(v).max(axis=-1, keepdims=True) / np.float32(7), np.float16)  # beyond 65504: 65504
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.clip(np.rint(v / scale), -7, 7) + np.float32(0)  # code 0 is +0
        out = np.where(scale == 0, np.float32(0), (k * scale).astype(np.float32))
        return out.reshape(rows, -1)[:, :cols]
    if fmt == "nvfp4":
        v = blocks_of(x, 16)
        glob = np.float32(np.abs(x).max()) / np.float32(448 * 6)
        bscale = cast_saturating(np.abs(v).max(axis=-1, keepdims=True) / np.float32(6) / glob, ml_dtypes.float8_e4m3fn)
        step = (bscale * glob).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            e = cast_saturating(np.where(step == 0, np.float32(0), v / step), ml_dtypes.float4_e2m1fn)
        out = np.where(step == 0, np.float32(0), (e * bscale) * glob).astype(np.float32)
        return out.reshape(rows, -1)[:, :cols]
    raise AssertionError(f"no reference for {fmt}")


def assert_bits_equal(got, want, what, x=None):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, (f"{what} (seed {SEED}): {bad.size} of {got.size} differ, first at {bad[:4]}: "
                           + (f"x={x.flat[bad[:4]]!r} " if x is not None else "")
                           + f"got={got.flat[bad[:4]]!r} want={want.flat[bad[:4]]!r}")


# ---- the package -------------------------------------------------------------------------------------

def test_version_is_the_cmake_project_version():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    version = re.search(r"project\(loraq VERSION ([0-9.]+)", cmake).group(1)
    assert loraq.__version__ == version == importlib.metadata.version("loraq")


def test_package_ships_type_stubs():
    folder = pathlib.Path(loraq.__file__).parent
    assert (folder / "py.typed").exists()
    stub = (folder / "_core.pyi").read_text()
    for name in ("def fake_quant(", "def pack(", "def unpack(", "class PackedMatrix", "class QuantizedWeight",
                 "def quantize_weight(", "def quantize_model(", "def evaluate("):
        assert name in stub, f"_core.pyi lacks {name}"


def test_formats_match_the_command_line(run_loraq):
    import json
    cli = {f["name"]: f for f in json.loads(run_loraq("formats", "--json", "--row-length", "200").stdout)}
    ours = {f["name"]: f for f in loraq.formats(row_length=200)}
    assert list(ours) == ALL_FORMATS and set(cli) == set(ours)
    for name, f in ours.items():
        for key in ("element", "element_bits", "block_size", "scale", "bits_per_value", "bits_per_value_at_row_length",
                    "element_max", "description"):
            assert f[key] == cli[name][key], f"{name}.{key}"
    assert loraq.format_info("mxfp4_e2m1")["name"] == "mxfp4"
    assert loraq.format_info("sint4")["bits_per_value"] == 4 + 16 / 64


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away"])
def test_fake_quant_matches_loraq_cast(fmt, rounding, tmp_path, run_loraq):
    x = sample_matrix(24, 200, SEED)  # 200: a partial last block for every block size
    np.save(tmp_path / "x.npy", x)
    run_loraq("cast", "--format", fmt, "--rounding", rounding.replace("nearest_", "ties-"), "--in", tmp_path / "x.npy",
              "--out", tmp_path / "y.npy", "--codes-out", tmp_path / "codes.safetensors")
    assert_bits_equal(loraq.fake_quant(x, fmt, rounding), np.load(tmp_path / "y.npy"), f"{fmt} {rounding}", x)
    packed = loraq.pack(x, fmt, rounding)
    cli = st.load_file(str(tmp_path / "codes.safetensors"))
    np.testing.assert_array_equal(packed.codes, cli["array.codes"], err_msg=f"{fmt} codes")
    np.testing.assert_array_equal(packed.scales, cli["array.scales"], err_msg=f"{fmt} scales")
    if fmt == "nvfp4":
        assert np.float32(packed.tensor_scale) == cli["array.tensor_scale"][0]


@pytest.mark.parametrize("fmt", [f for f in ALL_FORMATS if f != "int8_channel"])
def test_fake_quant_matches_ml_dtypes_reference(fmt):
    x = sample_matrix(32, 200, SEED + 1)
    assert_bits_equal(loraq.fake_quant(x, fmt), reference_fake_quant(x, fmt), fmt, x)


def test_mx_fake_quant_matches_torchao():
    torch = pytest.importorskip("torch", reason="torch is not installed: torchao cross-check NOT RUN")
    mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor", reason="torchao is not installed")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    x = sample_matrix(16, 256, SEED + 2)
    scale, data = mx_tensor.to_mx(torch.from_numpy(x), torch.float4_e2m1fn_x2, 32, ScaleCalculationMode.FLOOR)
    want = mx_tensor.to_dtype(data, scale, torch.float4_e2m1fn_x2, 32, torch.float32).numpy()
    assert_bits_equal(loraq.fake_quant(x, "mxfp4"), want, "mxfp4 vs torchao", x)
    np.testing.assert_array_equal(loraq.pack(x, "mxfp4").scales, scale.view(torch.uint8).numpy().reshape(16, -1))


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_pack_unpack_round_trip_is_fake_quant(fmt):
    x = sample_matrix(20, 200, SEED + 3)
    want = loraq.fake_quant(x, fmt)
    packed = loraq.pack(x, fmt)
    assert (packed.format, packed.rows, packed.cols) == (fmt, 20, 200)
    assert packed.codes.dtype == np.uint8 and packed.scales.dtype == np.uint8
    assert not packed.codes.flags.writeable
    assert_bits_equal(loraq.unpack(packed), want, f"{fmt} unpack(pack(x))")
    # The same codes decoded by quantized_layout.py (numpy and ml_dtypes, written from the contract).
    tensors = {"w.qweight": packed.codes, "w.wscales": packed.scales,
               "w.wscale_global": np.float32([packed.tensor_scale])}
    assert_bits_equal(quantized_layout.decode(fmt, tensors, "w", 20, 200), want, f"{fmt} independent decode")
    # Codes from elsewhere make the same matrix.
    again = loraq.PackedMatrix(fmt, 20, 200, packed.codes.copy(), packed.scales.copy(), packed.tensor_scale)
    assert_bits_equal(loraq.unpack(again), want, f"{fmt} rebuilt")
    # A 1-D array is one row (nvfp4's tensor scale is then that row's).
    assert_bits_equal(loraq.fake_quant(x[3], fmt), loraq.fake_quant(x[3:4], fmt)[0], f"{fmt} 1-D")
    assert loraq.pack(x[3], fmt).rows == 1


def test_fake_quant_in_place_and_without_copies():
    x = sample_matrix(8, 256, SEED + 4)
    want = loraq.fake_quant(x, "mxfp6_e2m3")
    y = x.copy()
    assert loraq.fake_quant(y, "mxfp6_e2m3", out=y) is y
    assert_bits_equal(y, want, "in place")
    readonly = x.copy()
    readonly.flags.writeable = False
    assert_bits_equal(loraq.fake_quant(readonly, "mxfp6_e2m3"), want, "read-only input")
    strided = np.zeros((8, 512), np.float32)
    strided[:, ::2] = x
    assert_bits_equal(loraq.fake_quant(strided[:, ::2], "mxfp6_e2m3"), want, "strided input (copied)")
    assert_bits_equal(loraq.fake_quant(x.tolist(), "mxfp6_e2m3"), want, "list input")


def test_same_values_on_every_code_path_and_thread_count():
    x = sample_matrix(64, 1152, SEED + 5)
    want = loraq.fake_quant(x, "nvfp4", isa="scalar", threads=1)
    for isa in ("avx2", "avx512", None):
        if isa and not re.search(isa, open("/proc/cpuinfo").read().replace("avx512f", "avx512")):
            continue
        assert_bits_equal(loraq.fake_quant(x, "nvfp4", isa=isa, threads=2), want, f"isa {isa}")


# ---- methods -----------------------------------------------------------------------------------------

def relative_error(w, w_eff):
    w, w_eff = w.astype(np.float64), w_eff.astype(np.float64)
    return np.linalg.norm(w_eff - w) / np.linalg.norm(w)


def low_rank_plus_noise(out, inp, seed, heavy_tailed=False):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((out, 16)), rng.standard_normal((16, inp))
    noise = rng.standard_t(3, size=(out, inp)) if heavy_tailed else rng.standard_normal((out, inp))
    return ((u @ v) / 4 + noise * 0.3).astype(np.float32) / np.float32(np.sqrt(inp))


def test_method_table():
    names = [m["name"] for m in loraq.methods()]
    assert names[:2] == ["rtn", "svd_lowrank"] and "loraq" in names
    steps = loraq.method_info("loraq")["params"]["steps"]
    assert steps["type"] == "int" and steps["default"] == 1000


def test_rtn_residual_is_fake_quant():
    w = low_rank_plus_noise(96, 256, SEED + 6)
    r = loraq.quantize_weight(w, "rtn", residual="mxfp4")
    assert_bits_equal(r.residual, loraq.fake_quant(w, "mxfp4"), "rtn residual")
    assert r.down is None and r.up is None and r.packed_down is None and r.rank == 0 and r.branch_format is None
    assert_bits_equal(loraq.unpack(r.packed_residual), r.residual, "packed residual")
    assert r.metrics["relative_error"] == pytest.approx(relative_error(w, r.residual), rel=1e-9)
    assert r.metrics["bits_per_value"] == pytest.approx(4 + 8 / 32)


def test_svd_lowrank_error_falls_with_rank():
    w = low_rank_plus_noise(128, 256, SEED + 7)
    errors = []
    for rank in (2, 8, 32):
        r = loraq.quantize_weight(w, "svd_lowrank", residual="sint4", branch="fp16", rank=rank)
        assert r.down.shape == (rank, 256) and r.up.shape == (128, rank) and r.rank == rank
        w_eff = r.residual.astype(np.float64) + r.up.astype(np.float64) @ r.down.astype(np.float64)
        assert r.metrics["relative_error"] == pytest.approx(relative_error(w, w_eff), rel=1e-4, abs=1e-7)
        errors.append(r.metrics["relative_error"])
    assert errors[0] > errors[1] > errors[2], f"errors by rank 2, 8, 32: {errors}"


def test_effective_weight_is_residual_plus_branch_rank_by_rank():
    w = low_rank_plus_noise(64, 192, SEED + 8)
    r = loraq.quantize_weight(w, "svd_lowrank", residual="mxint4", branch="mxfp8_e4m3", rank=5)
    want = r.residual.copy()
    for k in range(r.rank):  # docs/checkpoint.md's order, in fp32
        want += r.up[:, k:k + 1] * r.down[k][None, :]
    assert_bits_equal(r.effective_weight(), want, "effective weight")
    assert r.metrics["relative_error"] == pytest.approx(relative_error(w, want), rel=1e-9)


def test_loraq_beats_svd_lowrank_at_equal_budget():
    w = low_rank_plus_noise(128, 512, SEED + 9, heavy_tailed=True)
    kwargs = dict(residual="sint4", branch="mxfp6_e2m3", budget=128)
    svd = loraq.quantize_weight(w, "svd_lowrank", **kwargs)
    ours = loraq.quantize_weight(w, "loraq", steps=300, rotation_steps=100, **kwargs)
    assert ours.rank == svd.rank == int(128 // 6.25)
    assert ours.metrics["bits_per_value"] == svd.metrics["bits_per_value"]
    assert ours.metrics["relative_error"] < svd.metrics["relative_error"], (ours.metrics, svd.metrics)
    w_eff = ours.residual.astype(np.float64) + ours.up.astype(np.float64) @ ours.down.astype(np.float64)
    assert ours.metrics["relative_error"] == pytest.approx(relative_error(w, w_eff), rel=1e-4)


def test_quantize_weight_from_a_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "name: t\nmethod: rtn\nresidual: {format: sint4}\nlayers: {preset: generic}\n"
        "overrides:\n  - match: 'blocks.1.*'\n    method: svd_lowrank\n    branch: {format: fp16, rank: 4}\n")
    w = low_rank_plus_noise(64, 128, SEED + 10)
    plain = loraq.quantize_weight(w, recipe=tmp_path / "r.yaml", layer="blocks.0.proj.weight")
    assert plain.method == "rtn"
    assert_bits_equal(plain.residual, loraq.fake_quant(w, "sint4"), "recipe defaults")
    over = loraq.quantize_weight(w, recipe=str(tmp_path / "r.yaml"), layer="blocks.1.proj.weight")
    same = loraq.quantize_weight(w, "svd_lowrank", residual="sint4", branch="fp16", rank=4)
    assert_bits_equal(over.effective_weight(), same.effective_weight(), "recipe override")
    assert loraq.load_recipe(tmp_path / "r.yaml")["name"] == "t"
    with pytest.raises(ValueError, match="drop rank"):
        loraq.quantize_weight(w, recipe=tmp_path / "r.yaml", rank=3)


# ---- checkpoints -------------------------------------------------------------------------------------

def test_checkpoint_functions_agree_with_the_command_line(tmp_path, run_loraq):
    rng = np.random.default_rng(SEED + 11)
    tensors = {f"blocks.{i}.proj.weight": rng.standard_normal((64, 128)).astype(np.float32) for i in range(2)}
    tensors["blocks.0.norm.weight"] = np.ones(128, np.float32)
    st.save_file(tensors, str(tmp_path / "model.safetensors"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nmethod: rtn\nresidual: {format: mxfp4}\nlayers: {preset: generic}\n")
    summary = loraq.quantize_model(tmp_path / "model.safetensors", recipe, tmp_path / "q.safetensors", threads=2)
    rows = {row["name"]: row for row in summary["layers"]}
    assert set(rows) == {"blocks.0.proj.weight", "blocks.1.proj.weight"}
    assert summary["parameters"] == 2 * 64 * 128 and summary["reports"]
    for name, row in rows.items():
        assert row["relative_error"] == pytest.approx(relative_error(tensors[name], loraq.fake_quant(tensors[name], "mxfp4")))
    evaluated = {row["name"]: row["relative_error"] for row in loraq.evaluate(tmp_path / "q.safetensors",
                                                                            tmp_path / "model.safetensors")}
    assert evaluated == pytest.approx({name: row["relative_error"] for name, row in rows.items()})
    loraq.export_dequantized(tmp_path / "q.safetensors", tmp_path / "fake.safetensors", dtype="F32")
    run_loraq("export", tmp_path / "q.safetensors", "-o", tmp_path / "fake-cli.safetensors", "--dequantized",
              "--dtype", "F32")
    ours, cli = st.load_file(str(tmp_path / "fake.safetensors")), st.load_file(str(tmp_path / "fake-cli.safetensors"))
    assert set(ours) == set(cli) == set(tensors)
    for name in tensors:
        assert_bits_equal(ours[name], cli[name], name)
    assert_bits_equal(ours["blocks.1.proj.weight"], loraq.fake_quant(tensors["blocks.1.proj.weight"], "mxfp4"), "export")


# ---- bad input ---------------------------------------------------------------------------------------

W = np.ones((8, 64), np.float32)


@pytest.mark.parametrize("call, error, needles", [
    (lambda: loraq.fake_quant(W, "mxfp3"), loraq.Error, ["unknown format 'mxfp3'", "mxfp4"]),
    (lambda: loraq.pack(W, "int3"), loraq.Error, ["unknown format 'int3'"]),
    (lambda: loraq.fake_quant(W, "mxfp4", rounding="stochastic"), loraq.Error, ["unknown rounding 'stochastic'"]),
    (lambda: loraq.fake_quant(W.astype(np.float64), "mxfp4"), TypeError, ["float32", "float64"]),
    (lambda: loraq.fake_quant(W.astype(np.float16), "mxfp4"), TypeError, ["float16"]),
    (lambda: loraq.fake_quant(np.zeros((2, 3, 64), np.float32), "mxfp4"), loraq.Error, ["3-D", "(2, 3, 64)"]),
    (lambda: loraq.fake_quant(np.float32([1, np.nan, 2]), "mxfp4"), loraq.Error, ["NaN", "[0, 1]"]),
    (lambda: loraq.fake_quant(W, "mxfp4", out=np.zeros((8, 32), np.float32)), loraq.Error, ["out=", "(8, 64)"]),
    (lambda: loraq.fake_quant(W, "mxfp4", isa="neon"), loraq.Error, ["unknown instruction set 'neon'"]),
    (lambda: loraq.PackedMatrix("mxfp4", 8, 64, np.zeros(10, np.uint8), np.zeros(16, np.uint8)), loraq.Error,
     ["codes", "256 bytes", "got 10"]),
    # 2^40 x 2^40 used to wrap to 0 bytes and be accepted with empty arrays.
    (lambda: loraq.PackedMatrix("sint4", 2**40, 2**40, np.zeros(0, np.uint8), np.zeros(0, np.uint8)), loraq.Error,
     ["1099511627776 x 1099511627776 is too large"]),
    (lambda: loraq.PackedMatrix("fp16", 2**31, 2**33, np.zeros(0, np.uint8), np.zeros(0, np.uint8)), loraq.Error,
     ["too large"]),
    (lambda: loraq.quantize_weight(W, "gptq", rank=4), loraq.Error, ["unknown method 'gptq'", "loraq"]),
    (lambda: loraq.quantize_weight(W, "loraq", rank=4, stepz=3), loraq.Error,
     ["unknown parameter 'stepz'", "steps"]),
    (lambda: loraq.quantize_weight(W, "loraq", rank=4, steps=1.5), loraq.Error, ["'steps'", "expected an int"]),
    (lambda: loraq.quantize_weight(W, "loraq", rank=4, lr=7.0), loraq.Error, ["'lr'", "[0, 1]"]),
    (lambda: loraq.quantize_weight(W, "svd_lowrank", residual="sint5", rank=4), loraq.Error, ["unknown format 'sint5'"]),
    (lambda: loraq.quantize_weight(W, "svd_lowrank", branch="fp12", rank=4), loraq.Error, ["unknown format 'fp12'"]),
    (lambda: loraq.quantize_weight(W, "svd_lowrank"), loraq.Error, ["rank", "budget"]),
    (lambda: loraq.quantize_weight(W, "rtn", rank=4), loraq.Error, ["no low-rank branch", "rank"]),
    (lambda: loraq.quantize_weight(W.astype(np.float64), "rtn"), TypeError, ["float64"]),
    (lambda: loraq.quantize_weight(W[0], "rtn"), loraq.Error, ["2-D weight", "1-D"]),
    (lambda: loraq.quantize_weight(np.zeros((2, 8, 64), np.float32), "rtn"), loraq.Error, ["2-D weight", "3-D"]),
    (lambda: loraq.quantize_weight(np.where(np.eye(8, 64) > 0, np.nan, 1).astype(np.float32), "rtn", layer="blocks.3.w"),
     loraq.Error, ["blocks.3.w", "NaN", "[0, 0]"]),
    (lambda: loraq.quantize_weight(W, recipe="/nonexistent/recipe.yaml"), loraq.Error, ["/nonexistent/recipe.yaml"]),
    (lambda: loraq.quantize_weight(W, "loraq", rank=4, device="tpu"), loraq.Error,
     ["quantize_weight: device tpu", "expected cpu, cuda or cuda:N"]),
    (lambda: loraq.quantize_weight(W, "loraq", rank=4, device="cuda:-1"), loraq.Error, ["device cuda:-1"]),
    (lambda: loraq.quantize_model("/nonexistent/m.safetensors", "/nonexistent/r.yaml", "/tmp/o", device="gpu"),
     loraq.Error, ["quantize_model: device gpu", "expected cpu, cuda or cuda:N"]),
    (lambda: loraq.evaluate("/nonexistent/q.safetensors", "/nonexistent/m.safetensors"), loraq.Error,
     ["/nonexistent/q.safetensors"]),
])
def test_bad_input_names_the_problem(call, error, needles):
    with pytest.raises(error) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {str(info.value)!r}"


# ---- device= (LoRaQ's loops on a GPU) ------------------------------------------------------------------

GPU = pytest.mark.skipif(loraq._core.cuda_device_count() == 0,
                         reason="SKIPPED LOUDLY: no CUDA GPU visible: device='cuda' ran only as an error")


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    if loraq._core.cuda_device_count() > 0:
        pytest.skip("a GPU is visible: test_device_cuda_matches_the_cpu runs instead")
    expected = "no CUDA GPU is visible" if loraq._core.cuda_built() else "built without CUDA"
    with pytest.raises(loraq.Error, match=expected):
        loraq.quantize_weight(W, "loraq", rank=4, device="cuda")
    st.save_file({"blocks.0.proj.weight": W}, str(tmp_path / "m.safetensors"))
    (tmp_path / "r.yaml").write_text("name: t\nmethod: rtn\nresidual: {format: sint4}\nlayers: {preset: generic}\n")
    with pytest.raises(loraq.Error, match=expected):
        loraq.quantize_model(tmp_path / "m.safetensors", tmp_path / "r.yaml", tmp_path / "q", device="cuda:0")
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists(), "nothing written before the error"


@GPU
def test_device_cuda_matches_the_cpu():
    """docs/cuda.md's tolerance: the layer's relative weight error within 2% of the CPU's (cuBLAS and
    OpenBLAS sum in different orders), and the same bytes from two GPU runs."""
    w = low_rank_plus_noise(256, 400, SEED + 12)
    kwargs = dict(residual="sint4", branch="mxfp4", rank=86, steps=200, rotation_steps=100)
    cpu = loraq.quantize_weight(w, "loraq", **kwargs)
    gpu = [loraq.quantize_weight(w, "loraq", device="cuda:0", **kwargs) for _ in range(2)]
    assert gpu[0].metrics["relative_error"] == pytest.approx(cpu.metrics["relative_error"], rel=0.02)
    for part in ("residual", "down", "up"):
        assert_bits_equal(getattr(gpu[0], part), getattr(gpu[1], part), f"two GPU runs: {part}")


def test_loraq_errors_are_value_errors():
    assert issubclass(loraq.Error, ValueError)
