"""Checks loraq's .npy and safetensors files against numpy and the reference `safetensors` library.

Until the Python bindings exist, the C++ side is reached through tests/cpp/io_roundtrip_tool.cpp:
`io_roundtrip_tool IN OUT` reads IN with loraq's reader and writes it back with loraq's writer.
scripts/test.sh builds it and sets LORAQ_IO_TOOL (build/tests/io_roundtrip_tool is the default), e.g.
    LORAQ_IO_TOOL=build/tests/io_roundtrip_tool pytest tests/python/test_safetensors_interop.py
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is needed for bfloat16 and float8 arrays")
safetensors = pytest.importorskip("safetensors", reason="the reference safetensors library is not installed")
import safetensors.numpy as stnp  # noqa: E402

_BUILT = Path(__file__).resolve().parents[2] / "build" / "tests" / "io_roundtrip_tool"
TOOL = os.environ.get("LORAQ_IO_TOOL") or (str(_BUILT) if _BUILT.exists() else None)
if not TOOL:
    pytest.skip(
        "LORAQ_IO_TOOL IS NOT SET: the safetensors/npy interop tests did NOT run. Build "
        "tests/cpp/io_roundtrip_tool.cpp and point LORAQ_IO_TOOL at it.",
        allow_module_level=True,
    )

STORIES = Path(__file__).resolve().parents[3] / "shared" / "data" / "stories260k.safetensors"


def run_tool(src, dst):
    return subprocess.run([TOOL, str(src), str(dst)], capture_output=True, text=True, timeout=120)


def roundtrip(src, dst):
    result = run_tool(src, dst)
    assert result.returncode == 0, f"io_roundtrip_tool failed: {result.stderr}"
    assert not Path(f"{dst}.tmp-{os.getpid()}").exists()
    return dst.read_bytes()


def random_array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    count = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)  # every bit pattern, NaNs included: compared as bytes


def read_header(data):
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def parse_safetensors(data):
    """Independent reader: {name: (dtype, shape, bytes)} and the metadata."""
    length, header = read_header(data)
    body = data[8 + length :]
    metadata = header.pop("__metadata__", {})
    tensors = {k: (v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]]) for k, v in header.items()}
    return tensors, metadata


# ---------------------------------------------------------------- npy

NPY_DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]
SHAPES = [(), (0,), (3,), (2, 3), (2, 0, 4), (1, 2, 3, 4), (70000,)]


@pytest.mark.parametrize("dtype", NPY_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_npy_roundtrip_is_byte_identical_to_np_save(tmp_path, dtype, shape):
    arr = random_array(np.random.default_rng(len(shape) * 7 + np.dtype(dtype).itemsize), dtype, shape)
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, arr)
    out = roundtrip(src, dst)
    assert out == src.read_bytes()
    back = np.load(dst)
    if dtype is ml_dtypes.bfloat16:  # numpy stores bfloat16 as '<V2'; the bytes say nothing more
        assert back.dtype == np.dtype("V2")
        back = back.view(ml_dtypes.bfloat16)
    assert back.shape == arr.shape and back.tobytes() == arr.tobytes()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_reads_every_format_version(tmp_path, version):
    arr = random_array(np.random.default_rng(5), np.float32, (4, 5))
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    with open(src, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)
    out = roundtrip(src, dst)
    np.save(tmp_path / "ref.npy", arr)
    assert out == (tmp_path / "ref.npy").read_bytes()  # we always write 1.0 when it fits


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: np.asfortranarray(np.ones((2, 3), np.float32)), "fortran_order"),
        (lambda: np.ones(3, ">f4"), "big-endian"),
        (lambda: np.ones(3, np.int32), "unsupported descr '<i4'"),
        (lambda: np.ones(3, np.float64), "unsupported descr '<f8'"),
    ],
)
def test_npy_rejections_name_the_file(tmp_path, make, message):
    src = tmp_path / "bad input.npy"
    np.save(src, make())
    result = run_tool(src, tmp_path / "out.npy")
    assert result.returncode == 1
    assert str(src) in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "out.npy").exists()


def test_truncated_npy_names_expected_and_actual_bytes(tmp_path):
    src = tmp_path / "t.npy"
    np.save(src, np.ones((2, 3), np.float32))
    src.write_bytes(src.read_bytes()[:-5])
    result = run_tool(src, tmp_path / "out.npy")
    assert result.returncode == 1
    assert str(src) in result.stderr and "expected 24 data bytes" in result.stderr and "holds 19" in result.stderr


# ---------------------------------------------------------------- safetensors

ST_DTYPES = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "I32": np.int32, "U32": np.uint32, "F32": np.float32, "C64": np.complex64,
    "F64": np.float64, "I64": np.int64, "U64": np.uint64, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E4M3FNUZ": ml_dtypes.float8_e4m3fnuz,
    "F8_E5M2FNUZ": ml_dtypes.float8_e5m2fnuz, "F8_E8M0": ml_dtypes.float8_e8m0fnu,
}


def mixed_tensors(seed=0):
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (name, dtype) in enumerate(ST_DTYPES.items()):
        shape = [(2, 3), (5,), (1, 2, 2), ()][i % 4]
        tensors[f"w.{name.lower()}"] = random_array(rng, dtype, shape)
    tensors["Zeta.scalar"] = np.array(1.5, np.float32)
    tensors["empty"] = np.zeros((3, 0), ml_dtypes.bfloat16)
    tensors["a/empty_i8"] = np.zeros((0,), np.int8)
    return tensors


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"k\u00e9\n": "v\"\\/\x01\x7f \u4e2d"}])
def test_safetensors_roundtrip_is_byte_identical_to_save_file(tmp_path, metadata):
    tensors = mixed_tensors()
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    stnp.save_file(tensors, src, metadata=metadata)
    out = roundtrip(src, dst)
    assert out == src.read_bytes()
    parsed, meta = parse_safetensors(out)
    assert meta == (metadata or {})
    assert set(parsed) == set(tensors)
    for name, arr in tensors.items():
        dtype, shape, data = parsed[name]
        assert np.dtype(ST_DTYPES[dtype]) == arr.dtype and shape == list(arr.shape) and data == arr.tobytes(), name


def test_reference_reads_our_files(tmp_path):
    plain = {k: v for k, v in mixed_tensors(1).items() if v.dtype.name in {
        "bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "complex64", "float64",
        "int64", "uint64"}}
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    stnp.save_file(plain, src, metadata={"note": "plain numpy dtypes"})
    roundtrip(src, dst)
    back = stnp.load_file(dst)
    assert set(back) == set(plain)
    for name, arr in plain.items():
        assert back[name].dtype == arr.dtype and back[name].tobytes() == arr.tobytes(), name
    with safetensors.safe_open(dst, framework="np") as f:
        assert f.metadata() == {"note": "plain numpy dtypes"}


def test_f4_packed_tensors_roundtrip(tmp_path):
    # float4_e2m1fn_x2 storage of shape [2, 3] is 6 bytes holding a logical [2, 6] F4 tensor.
    raw = np.arange(6, dtype=np.uint8) * 17
    spec = safetensors.TensorSpec(dtype="float4_e2m1fn_x2", shape=[2, 3], data_ptr=raw.ctypes.data, data_len=6)
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    safetensors.serialize_file({"packed": spec, "w": _spec(np.ones(4, np.float32))}, str(src))
    out = roundtrip(src, dst)
    assert out == src.read_bytes()
    parsed, _ = parse_safetensors(out)
    assert parsed["packed"] == ("F4", [2, 6], raw.tobytes())


_alive = []


def _spec(arr):
    _alive.append(arr)
    return safetensors.TensorSpec(dtype=arr.dtype.name, shape=list(arr.shape), data_ptr=arr.ctypes.data,
                                  data_len=arr.nbytes)


def test_many_metadata_keys_differ_only_in_key_order(tmp_path):
    # The reference keeps metadata in a Rust HashMap: its key order changes from process to process.
    # Ours is sorted. Everything else must be identical, and the header the same length.
    metadata = {"zz": "1", "aa": "2", "Mm": "3", "b": "4"}
    tensors = mixed_tensors(2)
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    stnp.save_file(tensors, src, metadata=metadata)
    out, ref = roundtrip(src, dst), src.read_bytes()
    (length, header), (ref_length, ref_header) = read_header(out), read_header(ref)
    assert length == ref_length and out[8 + length :] == ref[8 + length :]
    assert header == ref_header and list(header) == list(ref_header)  # tensors in the same order
    assert list(header["__metadata__"]) == sorted(metadata)


def test_empty_metadata_is_not_written(tmp_path):
    # save_file(metadata={}) writes "__metadata__":{}; we keep no empty metadata object, which gives
    # save_file(metadata=None)'s bytes. (With no tensors either, safetensors 0.8.0 writes the invalid
    # header '{},"__metadata__":{}}' and cannot read its own file; ours is '{}'.)
    tensors = mixed_tensors(3)
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    stnp.save_file(tensors, src, metadata={})
    stnp.save_file(tensors, tmp_path / "none.safetensors")
    assert roundtrip(src, dst) == (tmp_path / "none.safetensors").read_bytes()
    stnp.save_file({}, tmp_path / "empty.safetensors")
    assert roundtrip(tmp_path / "empty.safetensors", tmp_path / "empty_out.safetensors") == stnp.save({})


def test_real_checkpoint_matches_reference_save_file(tmp_path):
    if not STORIES.exists():
        pytest.skip(f"{STORIES} not found")
    dst = tmp_path / "out.safetensors"
    ours = roundtrip(STORIES, dst)
    with safetensors.safe_open(STORIES, framework="np") as f:
        metadata = f.metadata()
    stnp.save_file(stnp.load_file(STORIES), tmp_path / "ref.safetensors", metadata=metadata)
    assert ours == (tmp_path / "ref.safetensors").read_bytes()


@pytest.mark.parametrize("cut", [4, 100, -1])
def test_truncated_safetensors_name_the_file(tmp_path, cut):
    src = tmp_path / "in.safetensors"
    stnp.save_file(mixed_tensors(4), src)
    data = src.read_bytes()
    src.write_bytes(data[:cut])
    result = run_tool(src, tmp_path / "out.safetensors")
    assert result.returncode == 1 and str(src) in result.stderr, result.stderr
    assert not (tmp_path / "out.safetensors").exists()
