"""The loraq command from the outside: formats listing, cast on safetensors files written by the
safetensors library, determinism across threads and code paths, and bad input (one-line error that
names the problem, non-zero exit, nothing left behind)."""
import json

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")


def test_formats_json_lists_every_format_with_its_cost(run_loraq):
    listed = {f["name"]: f for f in json.loads(run_loraq("formats", "--json").stdout)}
    assert set(listed) == {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint4",
                           "sint4", "nvfp4", "int8_channel", "fp16", "bf16"}
    # FORMATS.md: element bits + scale bits / block.
    assert listed["mxfp4"]["bits_per_value"] == 4 + 8 / 32
    assert listed["sint4"]["bits_per_value"] == 4 + 16 / 64
    assert listed["nvfp4"]["bits_per_value"] == 4 + 8 / 16
    assert listed["mxfp8_e4m3"]["element_max"] == 448
    assert listed["mxfp6_e3m2"]["element_max"] == 28
    table = run_loraq("formats").stdout
    assert "mxfp4" in table and "e8m0" in table


def test_cast_safetensors_every_tensor_along_last_axis(tmp_path, run_loraq):
    rng = np.random.default_rng(3)
    tensors = {
        "blocks.0.attn.to_q.weight": rng.standard_normal((96, 80)).astype(np.float32),
        "blocks.0.ff.weight": rng.standard_normal((4, 5, 64)).astype(np.float16),
        "blocks.0.norm.weight": rng.standard_normal((40,)).astype(ml_dtypes.bfloat16),
        "step": np.array([7, 8, 9], dtype=np.int64),
    }
    st.save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"origin": "test"})
    run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "m.safetensors", "--out", tmp_path / "q.safetensors")
    out = st.load_file(str(tmp_path / "q.safetensors"))
    assert set(out) == set(tensors)
    np.testing.assert_array_equal(out["step"], tensors["step"])  # not a float: copied
    for name in ["blocks.0.attn.to_q.weight", "blocks.0.ff.weight", "blocks.0.norm.weight"]:
        x = tensors[name]
        assert out[name].dtype == x.dtype and out[name].shape == x.shape
        # The same tensor through the .npy path, as float32, must give the same values.
        np.save(tmp_path / "x.npy", x.astype(np.float32).reshape(-1, x.shape[-1]))
        run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy")
        want = np.load(tmp_path / "y.npy").reshape(x.shape)
        np.testing.assert_array_equal(out[name].astype(np.float32), want, err_msg=name)
    with open(tmp_path / "q.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["origin"] == "test"
    assert header["__metadata__"]["loraq.cast"] == "mxfp4"


def test_same_bytes_whatever_threads_and_code_path(tmp_path, run_loraq):
    x = np.random.default_rng(4).standard_normal((300, 1152)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outputs = []
    for extra in (["--threads", "1"], ["--threads", "2"], ["--isa", "scalar"]):
        out = tmp_path / f"y{len(outputs)}.npy"
        run_loraq("cast", "--format", "nvfp4", "--in", tmp_path / "x.npy", "--out", out, *extra)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def assert_clean_failure(result, tmp_path, *needles, out_name="out.npy"):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got: {result.stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(out_name)]
    assert leftovers == [], f"left behind: {leftovers}"


def test_missing_input_file(tmp_path, run_loraq):
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "nope.npy", "--out", tmp_path / "out.npy",
                  check=False)
    assert_clean_failure(r, tmp_path, "nope.npy")


def test_unsupported_dtype(tmp_path, run_loraq):
    np.save(tmp_path / "x.npy", np.zeros((4, 32), dtype=np.float64))
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "x.npy", "--out", tmp_path / "out.npy",
                  check=False)
    assert_clean_failure(r, tmp_path, "x.npy", "<f8")


def test_truncated_npy(tmp_path, run_loraq):
    np.save(tmp_path / "x.npy", np.ones((64, 64), dtype=np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) - 100])
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "x.npy", "--out", tmp_path / "out.npy",
                  check=False)
    assert_clean_failure(r, tmp_path, "x.npy")


def test_unknown_format(tmp_path, run_loraq):
    np.save(tmp_path / "x.npy", np.ones((4, 32), dtype=np.float32))
    r = run_loraq("cast", "--format", "mxfp3", "--in", tmp_path / "x.npy", "--out", tmp_path / "out.npy",
                  check=False)
    assert_clean_failure(r, tmp_path, "mxfp3", "mxfp4")


def test_nan_weight_is_refused_naming_the_tensor(tmp_path, run_loraq):
    w = np.ones((8, 32), dtype=np.float32)
    w[3, 5] = np.nan
    st.save_file({"layer.weight": w}, str(tmp_path / "m.safetensors"))
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "m.safetensors", "--out",
                  tmp_path / "out.safetensors", check=False)
    assert_clean_failure(r, tmp_path, "layer.weight", "NaN at [3, 5]", out_name="out.safetensors")
    x = np.ones((2, 3, 32), dtype=np.float32)
    x[1, 2, 7] = -np.inf
    np.save(tmp_path / "x.npy", x)
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "x.npy", "--out", tmp_path / "out.npy", check=False)
    assert_clean_failure(r, tmp_path, "x.npy", "Inf at [1, 2, 7]")


def test_hostile_safetensors_header(tmp_path, run_loraq):
    (tmp_path / "m.safetensors").write_bytes((2**40).to_bytes(8, "little") + b"{}")
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "m.safetensors", "--out",
                  tmp_path / "out.safetensors", check=False)
    assert_clean_failure(r, tmp_path, "m.safetensors", out_name="out.safetensors")


def test_existing_output_survives_a_failed_cast(tmp_path, run_loraq):
    (tmp_path / "out.npy").write_bytes(b"previous result")
    np.save(tmp_path / "x.npy", np.full((2, 32), np.inf, dtype=np.float32))
    r = run_loraq("cast", "--format", "mxfp4", "--in", tmp_path / "x.npy", "--out", tmp_path / "out.npy",
                  check=False)
    assert r.returncode != 0 and "Inf" in r.stderr
    assert (tmp_path / "out.npy").read_bytes() == b"previous result"
