"""Checkpoints between loraq and the Hugging Face stack (safetensors, huggingface_hub, diffusers).

What each side must accept from the other:
- loraq-make-model's sharded output is what diffusers' save_pretrained writes for the same tensors
  (huggingface_hub's split, file names, index text) and diffusers loads it as a PixArtTransformer2DModel;
- checkpoints written by diffusers' save_pretrained and huggingface_hub's save_torch_state_dict are read
  by `loraq inspect` and `loraq quantize`, whose output (docs/checkpoint.md) and `loraq export
  --dequantized` output load with the safetensors library;
- every dtype that safetensors and torch share passes through a sharded checkpoint byte for byte.
(Single files of every dtype through loraq's reader and writer: test_safetensors_interop.py.)
Expected values come from the reference libraries or from the documented format, never from loraq.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors", reason="the reference safetensors library is not installed")
hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (requirements-test.txt)")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "rtn-sint4.yaml"
SINT4_GROUP = 64  # the recipe's format: int4 codes -7..7, one fp16 scale per 64 values of a row
# The tiny PixArt-Sigma of these tests: 64 wide (whole sint4 groups), 2 blocks.
ARCH = {"hidden": 64, "blocks": 2, "caption_channels": 64}


@pytest.fixture(scope="session")
def make_model(loraq_bin):
    path = os.environ.get("LORAQ_MAKE_MODEL") or str(Path(loraq_bin).parent / "loraq-make-model")
    if not os.path.exists(path):
        pytest.fail(f"loraq-make-model is not built ({path}): run scripts/test.sh (or set LORAQ_MAKE_MODEL)")
    return path


@pytest.fixture(scope="session")
def diffusers():
    return pytest.importorskip("diffusers", reason="diffusers is not installed (requirements-test.txt)")


def pixart_sigma_selection(names):
    """The rtn-sint4 recipe's layers, from its preset's documented rule: attn1/attn2 to_q, to_k, to_v,
    to_out.0 and ff.net.0.proj, ff.net.2 of every transformer block."""
    rule = re.compile(r"transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))\.weight")
    return {n for n in names if rule.fullmatch(n)}


def raw_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def read_shards(folder):
    """{name: tensor}, {name: (safetensors dtype, shape)}, {name: shard file} and each shard's metadata,
    all through the safetensors library."""
    tensors, described, file_of, metadata = {}, {}, {}, {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            metadata[path.name] = f.metadata()
            for name in f.keys():
                assert name not in tensors, f"{name} is in two shards"
                s = f.get_slice(name)
                described[name] = (s.get_dtype(), list(s.get_shape()))
                file_of[name] = path.name
        tensors.update(load_file(path))
    return tensors, described, file_of, metadata


def diffusers_index_text(tensors, max_shard_bytes, base):
    """What diffusers' save_pretrained writes for these tensors saved in name order: huggingface_hub's
    split, and the index as json.dumps(index, indent=2, sort_keys=True) + "\\n"."""
    ordered = {name: tensors[name] for name in sorted(tensors)}
    split = hub.split_torch_state_dict_into_shards(ordered, max_shard_size=max_shard_bytes,
                                                   filename_pattern=base + "{suffix}.safetensors")
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    return split, json.dumps(index, indent=2, sort_keys=True) + "\n"


def check_diffusers_layout(folder, max_shard_bytes, base="diffusion_pytorch_model"):
    tensors, described, file_of, _ = read_shards(folder)
    split, expected_index = diffusers_index_text(tensors, max_shard_bytes, base)
    assert split.is_sharded, "the test meant to write several shards"
    index_path = Path(folder) / f"{base}.safetensors.index.json"
    assert index_path.read_text() == expected_index
    assert {p.name for p in Path(folder).glob("*.safetensors")} == set(split.filename_to_tensors)
    assert file_of == split.tensor_to_filename  # each tensor in exactly the shard the index names
    index = json.loads(expected_index)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    return tensors, described


def run_make_model(make_model, out, dtype, max_shard_gb):
    args = [make_model, "-o", out, "--hidden", ARCH["hidden"], "--blocks", ARCH["blocks"], "--caption-channels",
            ARCH["caption_channels"], "--dtype", dtype, "--max-shard-gb", max_shard_gb]
    subprocess.run(list(map(str, args)), check=True, capture_output=True, timeout=120)


# ---------------------------------------------------------------- loraq writes, Hugging Face reads

@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_make_model_shards_as_diffusers_save_pretrained(tmp_path, make_model, dtype):
    # 100 kB shards: several per model, and no tensor larger than a shard (the next test has those).
    run_make_model(make_model, tmp_path / "m", dtype, 0.0001)
    tensors, described = check_diffusers_layout(tmp_path / "m", int(0.0001 * 1e9))
    assert {d for d, _ in described.values()} == {dtype}
    assert max(t.numel() * t.element_size() for t in tensors.values()) <= int(0.0001 * 1e9)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {p.name for p in (tmp_path / "m").glob("*.safetensors")} | {
        "diffusion_pytorch_model.safetensors.index.json", "config.json"}


def test_make_model_tensors_larger_than_a_shard(tmp_path, make_model):
    # A tensor above --max-shard-gb gets a shard of its own (huggingface_hub's rule), and the index still
    # names each tensor's shard exactly once. (huggingface_hub appends such a tensor's shard before the
    # one being filled, so shard numbers may differ from its split; the grouping rule is what matters.)
    limit = 20000
    run_make_model(make_model, tmp_path / "m", "F32", limit / 1e9)
    tensors, _, file_of, _ = read_shards(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["weight_map"] == file_of
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    by_shard = {}
    for name, shard in file_of.items():
        by_shard.setdefault(shard, []).append(tensors[name].numel() * tensors[name].element_size())
    assert any(max(sizes) > limit for sizes in by_shard.values())
    for sizes in by_shard.values():
        assert len(sizes) == 1 or sum(sizes) <= limit, sizes
    n = len(by_shard)
    assert set(by_shard) == {f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}


def test_make_model_loads_in_diffusers(tmp_path, make_model, diffusers):
    run_make_model(make_model, tmp_path / "m", "BF16", 0.00005)
    tensors, _, _, _ = read_shards(tmp_path / "m")
    config = diffusers.PixArtTransformer2DModel.load_config(tmp_path / "m")
    # The names and shapes diffusers' own PixArtTransformer2DModel has for this config.
    reference = diffusers.PixArtTransformer2DModel.from_config(config).state_dict()
    assert {k: list(v.shape) for k, v in reference.items()} == {k: list(v.shape) for k, v in tensors.items()}
    # And diffusers' sharded loading (index, then shards) gives every value as stored.
    loaded = diffusers.PixArtTransformer2DModel.from_pretrained(tmp_path / "m", torch_dtype=torch.bfloat16).state_dict()
    for name, t in tensors.items():
        assert loaded[name].dtype == torch.bfloat16 and torch.equal(loaded[name], t), name


# ---------------------------------------------------------------- Hugging Face writes, loraq reads

def tiny_pixart(diffusers):
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=1, attention_head_dim=ARCH["hidden"], num_layers=ARCH["blocks"], in_channels=4,
        out_channels=8, cross_attention_dim=ARCH["hidden"], caption_channels=ARCH["caption_channels"], sample_size=8)


@pytest.fixture(scope="module", params=["diffusers", "huggingface_hub"])
def hf_checkpoint(request, tmp_path_factory, diffusers):
    """A sharded float32 PixArt-Sigma checkpoint as diffusers' save_pretrained or huggingface_hub's
    save_torch_state_dict writes it (30 kB shards), with the index's file name."""
    folder = tmp_path_factory.mktemp(request.param)
    model = tiny_pixart(diffusers)
    if request.param == "diffusers":
        model.save_pretrained(folder, max_shard_size="30KB")
        index = folder / "diffusion_pytorch_model.safetensors.index.json"
    else:
        state = {k: v.clone() for k, v in model.state_dict().items()}  # no shared storage
        hub.save_torch_state_dict(state, folder, max_shard_size="30KB", metadata={"source": "hub test"})
        index = folder / "model.safetensors.index.json"
    assert index.exists() and len(list(folder.glob("*.safetensors"))) > 1
    return folder, index


def test_loraq_inspect_reads_hf_sharded_checkpoint(hf_checkpoint, run_loraq):
    folder, index_path = hf_checkpoint
    index = json.loads(index_path.read_text())
    tensors, described, _, shard_metadata = read_shards(folder)
    report = json.loads(run_loraq("inspect", folder, "--json", "--preset", "pixart-sigma").stdout)
    assert report["shards"] == len(set(index["weight_map"].values()))
    assert report["total_bytes"] == index["metadata"]["total_size"]
    # checkpoint.hpp: the first shard's __metadata__, plus the index's metadata except total_size.
    expected_metadata = dict(shard_metadata[min(shard_metadata)])
    expected_metadata.update({k: v for k, v in index["metadata"].items() if k != "total_size"})
    assert report["metadata"] == expected_metadata and report["metadata"]["format"] == "pt"
    got = {t["name"]: (t["dtype"], t["shape"], t["bytes"]) for t in report["tensors"]}
    assert got == {n: (d, s, tensors[n].numel() * tensors[n].element_size()) for n, (d, s) in described.items()}
    selected = {t["name"] for t in report["tensors"] if t["selected"]}
    assert selected == pixart_sigma_selection(tensors) and len(selected) == 10 * ARCH["blocks"]


@pytest.fixture(scope="module")
def quantized(hf_checkpoint, tmp_path_factory, loraq_bin):
    """The HF checkpoint quantized with rtn-sint4 into 100 kB shards (more than its largest tensor),
    and exported dequantized."""
    folder, _ = hf_checkpoint
    out = tmp_path_factory.mktemp("quantized") / "q"
    deq = out.parent / "deq"
    for args in (["quantize", folder, "--recipe", RECIPE, "-o", out, "--no-progress", "--max-shard-gb", 0.0001],
                 ["export", out, "-o", deq, "--dequantized"]):
        result = subprocess.run([loraq_bin, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    return folder, out, deq


def test_quantized_output_loads_with_safetensors(quantized):
    source, out, _ = quantized
    original, original_described, _, _ = read_shards(source)
    tensors, described = check_diffusers_layout(out, int(0.0001 * 1e9))  # sharded as diffusers would
    _, _, _, metadata = read_shards(out)
    layers_expected = pixart_sigma_selection(original)
    for shard, meta in metadata.items():  # docs/checkpoint.md: every shard carries the same __metadata__
        assert meta == metadata[min(metadata)], shard
        assert meta["format"] == "pt"  # the input's metadata is kept
        assert meta["loraq.format_version"] == "1" and meta["loraq.version"]
        recipe = json.loads(meta["loraq.recipe"])
        assert recipe["name"] == "rtn-sint4" and recipe["defaults"]["residual"]["format"] == "sint4"
    layers = json.loads(metadata[min(metadata)]["loraq.layers"])
    assert {layer["name"] for layer in layers} == layers_expected
    replaced = {}
    for layer in layers:
        name, (dtype, shape) = layer["name"], original_described[layer["name"]]
        assert layer["shape"] == shape and layer["dtype"] == dtype, name
        assert (layer["method"], layer["residual"], layer["branch"], layer["rank"], layer["smoothed"]) == (
            "rtn", "sint4", None, 0, False), name
        out_features, in_features = shape
        prefix = name.removesuffix(".weight")
        # 4-bit codes two per byte; one little-endian fp16 scale (2 bytes) per 64-value group.
        replaced[prefix + ".qweight"] = ("U8", [out_features, in_features // 2])
        replaced[prefix + ".wscales"] = ("U8", [out_features, -(-in_features // SINT4_GROUP) * 2])
    kept = {n: d for n, d in original_described.items() if n not in layers_expected}
    assert described == {**kept, **replaced}
    for name in kept:  # every other tensor copied byte for byte
        assert raw_bytes(tensors[name]) == raw_bytes(original[name]), name


def test_dequantized_export_has_the_original_tensors(quantized):
    source, _, deq = quantized
    original, original_described, _, _ = read_shards(source)
    exported, described, _, metadata = read_shards(deq)
    assert described == original_described
    assert all(m.get("loraq.dequantized") == "true" for m in metadata.values())
    layers = pixart_sigma_selection(original)
    for name in original:
        if name not in layers:
            assert raw_bytes(exported[name]) == raw_bytes(original[name]), name
            continue
        # sint4 as documented: each group of 64 is code x s, codes -7..7, s the fp16 of amax/7. The
        # largest value maps to +-7 (amax/s is 7 within fp16 rounding), so s = max|W_eff| / 7.
        w = original[name].double().numpy().reshape(-1, SINT4_GROUP)
        w_eff = exported[name].double().numpy().reshape(-1, SINT4_GROUP)
        amax = np.abs(w).max(axis=1)
        s = np.abs(w_eff).max(axis=1) / 7
        assert np.all(s.astype(np.float16).astype(np.float64) == s), f"{name}: scales are not fp16 values"
        assert np.all(np.abs(s - amax / 7) <= amax / 7 * 2.0**-11), f"{name}: scale is not fp16(amax / 7)"
        codes = w_eff / s[:, None]
        assert np.all(codes == np.round(codes)) and np.all(np.abs(codes) <= 7), f"{name}: not code x scale"
        assert np.all(np.abs(w_eff - w) <= s[:, None] / 2 * (1 + 1e-6)), f"{name}: not rounded to nearest"


# ---------------------------------------------------------------- every dtype, sharded

# Every safetensors dtype torch has (C64 and the F4/F6/FNUZ/E8M0 ones go through numpy and ml_dtypes
# in test_safetensors_interop.py), under safetensors' name for it.
TORCH_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
                "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "F64": "float64",
                "I64": "int64", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def random_tensor(generator, dtype, shape):
    # Random bytes, so every bit pattern (NaN payloads, negative zero) must survive; compared as bytes.
    n = int(np.prod(shape, dtype=np.int64))
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=generator)
    if dtype == torch.bool:
        return (raw[:n] & 1).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    state = {}
    for st_name, torch_name in TORCH_DTYPES.items():
        dtype = getattr(torch, torch_name, None)
        if dtype is not None:  # older torch lacks the unsigned and float8 types
            state[f"extra.{st_name.lower()}"] = random_tensor(g, dtype, (3, 5))
    state["extra.scalar_f64"] = random_tensor(g, torch.float64, ())
    state["extra.empty_i32"] = torch.zeros((0, 4), dtype=torch.int32)
    state["transformer_blocks.0.attn1.to_q.weight"] = torch.randn(64, 128, generator=g)  # one layer to quantize
    folder = tmp_path_factory.mktemp("every_dtype")
    hub.save_torch_state_dict(state, folder, max_shard_size=100)  # about one tensor per shard
    assert len(list(folder.glob("*.safetensors"))) > len(TORCH_DTYPES) // 2
    return folder, state


def test_every_dtype_is_listed_by_loraq_inspect(every_dtype, run_loraq):
    folder, state = every_dtype
    _, described, _, _ = read_shards(folder)
    report = json.loads(run_loraq("inspect", folder / "model.safetensors.index.json", "--json").stdout)
    got = {t["name"]: (t["dtype"], t["shape"], t["bytes"]) for t in report["tensors"]}
    assert got == {n: (d, s, state[n].numel() * state[n].element_size()) for n, (d, s) in described.items()}
    assert {d for d, _ in described.values()} >= {"BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"}


def test_every_dtype_passes_through_quantize_and_export(every_dtype, tmp_path, run_loraq):
    folder, state = every_dtype
    run_loraq("quantize", folder, "--recipe", RECIPE, "-o", tmp_path / "q.safetensors", "--no-progress")
    run_loraq("export", tmp_path / "q.safetensors", "-o", tmp_path / "deq.safetensors", "--dequantized")
    _, described, _, _ = read_shards(folder)
    with safe_open(tmp_path / "q.safetensors", framework="pt") as f:
        quantized_names = set(f.keys())
    assert "transformer_blocks.0.attn1.to_q.qweight" in quantized_names
    for path in (tmp_path / "q.safetensors", tmp_path / "deq.safetensors"):
        out = load_file(path)
        for name, t in state.items():
            if name.startswith("extra."):
                assert out[name].dtype == t.dtype and out[name].shape == t.shape, (path.name, name)
                assert raw_bytes(out[name]) == raw_bytes(t), (path.name, name)
    exported = load_file(tmp_path / "deq.safetensors")
    assert set(exported) == set(state)
    with safe_open(tmp_path / "deq.safetensors", framework="pt") as f:
        assert {n: [f.get_slice(n).get_dtype(), list(f.get_slice(n).get_shape())] for n in f.keys()} == {
            n: [d, s] for n, (d, s) in described.items()}


@pytest.mark.parametrize("hidden", [64, 224])
def test_make_model_sana_has_diffusers_names_and_shapes(tmp_path, make_model, diffusers, hidden):
    """loraq-make-model --arch sana writes what diffusers' SanaTransformer2DModel has for its config
    (224 = 2 x 112: the real model's 112-wide cross-attention heads), and the sana preset picks the
    attention and pointwise-convolution weights of every block."""
    out = tmp_path / "sana"
    subprocess.run([make_model, "--arch", "sana", "-o", str(out), "--hidden", str(hidden), "--blocks", "2",
                    "--dtype", "F32"], check=True, capture_output=True)
    config = diffusers.SanaTransformer2DModel.load_config(out)
    reference = diffusers.SanaTransformer2DModel.from_config(config).state_dict()
    tensors, _, _, _ = read_shards(out)
    assert {k: list(v.shape) for k, v in reference.items()} == {k: list(v.shape) for k, v in tensors.items()}
    loaded = diffusers.SanaTransformer2DModel.from_pretrained(out).state_dict()
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name
    loraq_bin = str(Path(make_model).parent / "loraq")
    listing = json.loads(subprocess.run([loraq_bin, "inspect", str(out), "--preset", "sana", "--json"], check=True,
                                        capture_output=True, text=True).stdout)
    selected = {t["name"] for t in listing["tensors"] if t["selected"]}
    linears = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
               "attn2.to_out.0", "ff.conv_inverted", "ff.conv_point"]
    assert selected == {f"transformer_blocks.{b}.{l}.weight" for b in range(2) for l in linears}
