"""MX block formats against torchao's MX implementation (ScaleCalculationMode.FLOOR, the OCP rule),
bit for bit: dequantized values, e8m0 scale codes and element codes, on random blocks spanning many
magnitudes, with exact ties, zero blocks and subnormal elements."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: torchao MX cross-check NOT RUN")
mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor",
                                reason="torchao is not installed: MX cross-check NOT RUN")
from torchao.prototype.mx_formats import constants  # noqa: E402
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

FORMATS = {
    "mxfp8_e4m3": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
    "mxfp6_e2m3": constants.DTYPE_FP6_E2M3,
    "mxfp6_e3m2": constants.DTYPE_FP6_E3M2,
    "mxfp4": torch.float4_e2m1fn_x2,
}


def random_blocks(rows, blocks, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, blocks, 32)).astype(np.float32)
    x *= np.exp2(rng.integers(-40, 40, size=(rows, blocks, 1))).astype(np.float32)  # a magnitude per block
    ties = rng.random((rows, blocks, 32)) < 0.25  # small integers and halves: exact grid midpoints
    x[ties] = (rng.integers(-12, 13, size=ties.sum()) * 0.5 * np.exp2(rng.integers(-2, 3, size=ties.sum()))).astype(np.float32)
    x[:, 1, :] = 0.0  # zero blocks
    x[0, 2, :] *= np.float32(1e-30)  # elements that fall below the element's subnormals
    return x.reshape(rows, blocks * 32)


def unpack_6bit(packed, n):
    b = packed.astype(np.uint32).reshape(packed.shape[0], -1, 3)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    codes = np.stack([(word >> (6 * j)) & 0x3F for j in range(4)], axis=-1)
    return codes.reshape(packed.shape[0], -1)[:, :n].astype(np.uint8)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mx_matches_torchao_floor(fmt, seed, tmp_path, run_loraq):
    elem = FORMATS[fmt]
    x = random_blocks(64, 12, seed=seed)
    np.save(tmp_path / "x.npy", x)
    run_loraq("cast", "--format", fmt, "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy",
              "--codes-out", tmp_path / "codes.safetensors")
    got = np.load(tmp_path / "y.npy")
    packed = load_file(str(tmp_path / "codes.safetensors"))

    scale, data = mx_tensor.to_mx(torch.from_numpy(x), elem, 32, ScaleCalculationMode.FLOOR)
    expected = mx_tensor.to_dtype(data, scale, elem, 32, torch.float32).numpy()

    bad = np.flatnonzero(got.view(np.uint32) != expected.view(np.uint32))
    assert bad.size == 0, (f"{fmt}: {bad.size} values differ; first x={x.flat[bad[:4]]!r} "
                           f"loraq={got.flat[bad[:4]]!r} torchao={expected.flat[bad[:4]]!r}")
    np.testing.assert_array_equal(packed["array.scales"], scale.view(torch.uint8).numpy().reshape(64, -1),
                                  err_msg="e8m0 scale codes")
    ours = packed["array.codes"]
    theirs = data.view(torch.uint8).numpy()
    if fmt.startswith("mxfp6"):  # torchao keeps fp6 codes one per byte; ours are packed 4 in 3 bytes
        ours = unpack_6bit(ours, x.shape[1])
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape), err_msg="element codes")
