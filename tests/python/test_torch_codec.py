"""loraq.torch's device codec (python/loraq/_torch_codec.py: rounding stated as a search of each
element's value set) against loraq.fake_quant (the C++ codecs: arithmetic on the exact grid, checked
against ml_dtypes and torchao elsewhere), bit for bit, for every format and both roundings. The
inputs aim at where two formulations part: exact ties, the top of each binade, saturation,
subnormal inputs and outputs, zero and -0, all-zero blocks and partial blocks.

Here the torch code runs on the CPU; on a machine with a GPU the last tests run it on the GPU too."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: loraq.torch's device codec NOT TESTED")
loraq = pytest.importorskip("loraq", reason="the loraq Python package is not installed (scripts/test.sh runs "
                                            "`pip install .`): loraq.torch's device codec NOT TESTED")
from loraq import _core  # noqa: E402
from loraq import _torch_codec as tc  # noqa: E402

SEED = 20261207
FORMATS = [f["name"] for f in loraq.formats()]
ROUNDINGS = ["nearest_even", "nearest_away"]
GRID_OF = {f["name"]: f["element"] for f in loraq.formats()}


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def assert_same_bits(x: np.ndarray, fmt: str, rounding: str) -> None:
    want = loraq.fake_quant(x, fmt, rounding)
    got = tc.fake_quant(torch.from_numpy(x), fmt, rounding).numpy()
    assert got.shape == want.shape
    differ = np.argwhere(bits(got) != bits(want))
    if differ.size:
        r, c = differ[0] if x.ndim == 2 else (0, differ[0][0])
        row = x[r] if x.ndim == 2 else x
        pytest.fail(f"{fmt} {rounding}: {len(differ)} values differ; first at {differ[0]}: input {row[c]!r} "
                    f"-> torch {got.reshape(-1, x.shape[-1])[r, c]!r}, C++ {want.reshape(-1, x.shape[-1])[r, c]!r}")


def grid_values(fmt: str) -> np.ndarray:
    return _core.element_grid(GRID_OF[fmt])["values"].astype(np.float64)


def tie_rows(fmt: str, rng: np.random.Generator, cols: int) -> np.ndarray:
    """Rows whose values sit exactly on grid points and on the midpoints between them, at scales
    that make them the block's own grid: for MX the block's amax is the element's largest value
    times 2^shift; for the integer formats it is the largest code times an exact fp16 step."""
    g = grid_values(fmt)
    points = np.concatenate([g, (g[:-1] + g[1:]) / 2])
    rows = []
    for shift in (-140, -130, -20, -3, 0, 5, 60, 100):
        vals = rng.choice(points, size=cols) * rng.choice([-1.0, 1.0], size=cols)
        if fmt in ("sint4", "int8_channel"):
            step = float(np.float16(rng.uniform(1, 2) * 2.0 ** max(min(shift, 10), -20)))
            vals, top = vals * step, g[-1] * step
        else:
            scale = 2.0 ** shift
            vals, top = vals * scale, g[-1] * scale
        vals[:: max(1, min(cols, 64) // 2)] = top  # every block, whole or partial, reaches its amax
        if np.abs(vals).max() <= np.finfo(np.float32).max:  # a row float32 cannot hold is left out
            rows.append(vals)
    return np.array(rows, dtype=np.float32)


def random_rows(rng: np.random.Generator, cols: int) -> np.ndarray:
    """Gaussian rows at magnitudes from float32's subnormals to near its largest value, with outliers,
    zeros, -0 and an all-zero row."""
    rows = []
    for exponent in (-149, -130, -126, -40, -8, 0, 3, 20, 90, 120):
        r = rng.standard_normal(cols) * 2.0 ** exponent
        r[rng.integers(0, cols, size=max(1, cols // 16))] *= 37.0  # outliers that set a block's scale
        r[rng.integers(0, cols, size=max(1, cols // 10))] = 0.0
        r[rng.integers(0, cols, size=max(1, cols // 10))] = -0.0
        rows.append(np.clip(r, -3.0e38, 3.0e38))
    rows.append(np.zeros(cols))
    rows.append(-np.zeros(cols))
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("cols", [1, 33, 86, 100, 256, 1156])
def test_random_values_match_the_cpp_codecs(fmt, rounding, cols):
    rng = np.random.default_rng([SEED, FORMATS.index(fmt), cols])
    assert_same_bits(random_rows(rng, cols), fmt, rounding)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_exact_ties_and_grid_points_match_the_cpp_codecs(fmt, rounding):
    rng = np.random.default_rng([SEED, 1, FORMATS.index(fmt)])
    x = tie_rows(fmt, rng, 200)
    assert len(x) >= 4
    assert_same_bits(x, fmt, rounding)
    if rounding == "nearest_even" and fmt != "nvfp4":  # the ties are real: the two roundings part on them
        assert np.any(bits(loraq.fake_quant(x, fmt, "nearest_even")) != bits(loraq.fake_quant(x, fmt, "nearest_away")))


def test_every_float32_binade_through_fp16_bf16_and_mxfp8():
    """One row holding, for every float32 exponent, values just below, at and above a binade edge."""
    e = np.arange(-149, 128, dtype=np.float64)
    edges = np.exp2(e)
    x = np.concatenate([edges, np.nextafter(edges.astype(np.float32), np.float32(np.inf)),
                        np.nextafter(edges.astype(np.float32), np.float32(0)), 1.5 * edges[:-1]]).astype(np.float32)
    x = np.concatenate([x, -x])
    for fmt in ("fp16", "bf16", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8", "nvfp4"):
        for rounding in ROUNDINGS:
            assert_same_bits(x, fmt, rounding)


def test_one_dimensional_and_empty_inputs_keep_their_shape():
    x = np.linspace(-3, 3, 70, dtype=np.float32)
    assert tc.fake_quant(torch.from_numpy(x), "mxfp4").shape == (70,)
    assert_same_bits(x, "mxfp4", "nearest_even")
    empty = tc.fake_quant(torch.zeros((0, 32)), "sint4")
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
def test_a_non_finite_value_is_named_as_the_cpp_codecs_name_it(bad, kind):
    x = np.ones((3, 40), np.float32)
    x[2, 17] = bad
    with pytest.raises(loraq.Error) as cpp:
        loraq.fake_quant(x, "mxfp4")
    with pytest.raises(loraq.Error) as dev:
        tc.fake_quant(torch.from_numpy(x), "mxfp4", what="fake_quant: the array")
    assert str(dev.value) == str(cpp.value)
    assert f"holds {kind} at [2, 17]" in str(dev.value)


def test_bad_names_and_shapes_are_clear_errors():
    x = torch.ones(4, 32)
    with pytest.raises(loraq.Error, match="unknown format 'mxfp5'"):
        tc.fake_quant(x, "mxfp5")
    with pytest.raises(loraq.Error, match="unknown rounding 'up'"):
        tc.fake_quant(x, "mxfp4", "up")
    with pytest.raises(loraq.Error, match="1-D or 2-D"):
        tc.fake_quant(torch.ones(2, 2, 32), "mxfp4")
    with pytest.raises(loraq.Error, match="unknown element 'e9m9'"):
        _core.element_grid("e9m9")
    with pytest.raises(loraq.Error, match="scale"):
        _core.element_grid("e8m0")


def test_element_grids_are_the_documented_value_sets():
    """FORMATS.md's element table, independently of the C++ table: count, largest and smallest
    positive value, and -0."""
    expect = {"e2m1": (8, 6.0, 0.5, True), "e2m3": (32, 7.5, 0.125, True), "e3m2": (32, 28.0, 0.0625, True),
              "e4m3": (127, 448.0, 2.0 ** -9, True), "e5m2": (124, 57344.0, 2.0 ** -16, True),
              "mx_int8": (128, 127 / 64, 1 / 64, False), "mx_int4": (8, 7 / 4, 1 / 4, False),
              "int4": (8, 7.0, 1.0, False), "int8": (128, 127.0, 1.0, False),
              "fp16": (31744, 65504.0, 2.0 ** -24, True), "bf16": (32640, float(np.float32(3.3895313892515355e38)),
                                                                2.0 ** -133, True)}
    for element, (count, largest, smallest, signed_zero) in expect.items():
        g = _core.element_grid(element)
        v = g["values"]
        assert (len(v), float(v[-1]), float(v[1]), g["signed_zero"]) == (count, largest, smallest, signed_zero), element
        assert v[0] == 0 and np.all(np.diff(v) > 0), element


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the device codec ran on the CPU only")


@cuda
@pytest.mark.parametrize("fmt", FORMATS)
def test_on_a_gpu_the_values_are_the_same_bits(fmt):
    rng = np.random.default_rng([SEED, 2, FORMATS.index(fmt)])
    x = np.concatenate([random_rows(rng, 100), tie_rows(fmt, rng, 100)])
    for rounding in ROUNDINGS:
        got = tc.fake_quant(torch.from_numpy(x).cuda(), fmt, rounding)
        assert got.device.type == "cuda"
        assert np.array_equal(bits(got.cpu().numpy()), bits(loraq.fake_quant(x, fmt, rounding))), (fmt, rounding)


@cuda
def test_on_a_gpu_quantized_linear_keeps_its_activations_on_the_device(monkeypatch):
    import loraq.torch as lt
    monkeypatch.setattr(loraq.torch, "fake_quant", lambda *a, **k: pytest.fail("a CUDA input went to the host codec"))
    x = torch.randn(4, 64, device="cuda")
    y = lt.fake_quant_activations(x, "mxint8")
    assert y.device.type == "cuda"
    assert np.array_equal(bits(y.cpu().numpy()), bits(loraq.fake_quant(x.cpu().numpy(), "mxint8")))
