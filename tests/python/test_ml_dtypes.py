"""Element conversions against ml_dtypes (round half to even), bit for bit, on >= 100 000 random and
edge values per encoding: every representable value, every midpoint and its neighbours, +-0,
subnormals, and random fp32 bit patterns inside the range where the contract and ml_dtypes agree
(|x| <= max normal; beyond it loraq saturates by contract while some ml_dtypes types give Inf/NaN,
which the saturation checks below pin down separately)."""
import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed: element cross-check NOT RUN")

ELEMENTS = {
    "e2m1": ml_dtypes.float4_e2m1fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e8m0": ml_dtypes.float8_e8m0fnu,
    "fp16": np.float16,
    "bf16": ml_dtypes.bfloat16,
}


def representable(dtype):
    """Every finite non-negative value of the encoding, sorted (from all of its bit patterns)."""
    bits = np.dtype(dtype).itemsize * 8
    codes = np.arange(2 ** min(bits, 16), dtype=np.uint16 if bits == 16 else np.uint8)
    if bits < 8:  # ml_dtypes stores 4- and 6-bit types in a byte; only the low bits are valid codes
        codes = np.arange(2**bits, dtype=np.uint8)
    values = codes.view(dtype).astype(np.float32)
    values = values[np.isfinite(values) & (values >= 0)]
    return np.unique(values)


def sample_values(dtype, rng):
    grid = representable(dtype).astype(np.float64)
    finfo = ml_dtypes.finfo(dtype)
    top = float(finfo.max)
    mids = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)
    edges = np.concatenate([grid.astype(np.float32), mids, np.nextafter(mids, np.float32(0)),
                            np.nextafter(mids, np.float32(np.inf)), np.float32([0.0, -0.0])])
    if dtype is not ml_dtypes.float8_e8m0fnu:
        edges = np.concatenate([edges, -edges])
    # Random fp32 bit patterns, and log-uniform magnitudes across the encoding's range.
    raw = rng.integers(0, 2**32, size=60000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    lo = max(np.log2(float(finfo.smallest_subnormal)) - 2, -149)
    logu = np.exp2(rng.uniform(lo, np.log2(top), size=120000)).astype(np.float32)
    logu *= rng.choice(np.float32([-1, 1]), size=logu.size)
    values = np.concatenate([edges, raw, logu]).astype(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) <= top)]
    if dtype is ml_dtypes.float8_e8m0fnu:  # unsigned and zero-less: ml_dtypes gives NaN for <= 0
        # ml_dtypes rounds every fp32 subnormal in (2^-127, 2^-126) up to 2^-126 (1.01 * 2^-127 -> 2^-126),
        # where the contract's round-to-nearest gives 2^-127; tests/cpp/test_element.cpp pins ours down.
        values = np.abs(values)
        values = values[(values == np.float32(2.0**-127)) | (values >= np.float32(2.0**-126))]
    return values


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


@pytest.mark.parametrize("element", list(ELEMENTS))
def test_element_rounding_matches_ml_dtypes(element, rng, tmp_path, run_loraq):
    dtype = ELEMENTS[element]
    x = sample_values(dtype, rng)
    assert x.size >= 100_000, f"only {x.size} values for {element}"
    expected = x.astype(dtype).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_loraq("cast", "--element", element, "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    got = np.load(tmp_path / "y.npy")
    mismatch = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert mismatch.size == 0, (
        f"{element}: {mismatch.size} of {x.size} differ, first x={x[mismatch[:5]]!r} "
        f"loraq={got[mismatch[:5]]!r} ml_dtypes={expected[mismatch[:5]]!r}")


@pytest.mark.parametrize("element", ["e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "fp16", "bf16"])
def test_beyond_max_saturates(element, tmp_path, run_loraq):
    """The contract saturates finite values beyond max normal (MX convention). ml_dtypes agrees for the
    encodings without Inf/NaN; for e4m3/e5m2/fp16/bf16 it overflows instead, so the expected value here
    is ml_dtypes' own max (finfo.max), not a number of ours."""
    top = np.float32(ml_dtypes.finfo(ELEMENTS[element]).max)
    with np.errstate(over="ignore"):
        x = np.array([top * 1.25, -top * 1.25, top * 4.0, 3.0e38, -3.0e38]).astype(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) > top)]
    np.save(tmp_path / "x.npy", x)
    run_loraq("cast", "--element", element, "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.sign(x) * top)


def test_bf16_npy_round_trip_through_cast(tmp_path, run_loraq, rng):
    """bfloat16 .npy files (as ml_dtypes saves them) are read and written in bfloat16."""
    x = rng.standard_normal((8, 64)).astype(ml_dtypes.bfloat16)
    np.save(tmp_path / "x.npy", x)
    run_loraq("cast", "--format", "mxfp8_e4m3", "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy",
              "--out-dtype", "F32")
    run_loraq("cast", "--format", "mxfp8_e4m3", "--in", tmp_path / "x.npy", "--out", tmp_path / "z.npy")
    y = np.load(tmp_path / "y.npy")
    z = np.load(tmp_path / "z.npy")
    assert y.dtype == np.float32 and z.dtype.itemsize == 2
    np.testing.assert_array_equal(z.view(ml_dtypes.bfloat16).astype(np.float32), y)
