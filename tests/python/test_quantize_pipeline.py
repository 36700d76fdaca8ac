"""`loraq quantize` end to end on a checkpoint with PixArt-Sigma's tensor names (28 blocks at reduced
width, made at test time): which layers it selects, what it writes (read back with the safetensors
library and an independent decoder of the layout), the dequantized export, determinism across
threads, kill-and-resume, and hostile input."""
import json
import os
import re
import pathlib
import signal
import subprocess
import time

import ml_dtypes
import numpy as np
import pytest

from quantized_layout import effective_weight, layer_table

st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")
safe_open = pytest.importorskip("safetensors").safe_open

ROOT = pathlib.Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BLOCKS = 28
HIDDEN = 128  # the shipped recipes go up to rank 128, which needs in_features >= 128

# diffusers' PixArtTransformer2DModel: the linear layers of each BasicTransformerBlock that SVDQuant
# quantizes; embedders, adaLN, caption projection, norms and proj_out stay in 16 bits.
BLOCK_LINEARS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                 "ff.net.0.proj", "ff.net.2"]
EXPECTED_LAYERS = sorted(f"transformer_blocks.{b}.{l}.weight" for b in range(BLOCKS) for l in BLOCK_LINEARS)


@pytest.fixture(scope="session")
def make_model_bin(loraq_bin):
    path = pathlib.Path(loraq_bin).parent / "loraq-make-model"
    assert path.exists(), f"{path} is not built"
    return str(path)


@pytest.fixture(scope="session")
def pixart_model(tmp_path_factory, make_model_bin):
    """A sharded bf16 diffusers folder (about 17 MB over 9 shards)."""
    folder = tmp_path_factory.mktemp("pixart") / "transformer"
    subprocess.run([make_model_bin, "-o", str(folder), "--hidden", str(HIDDEN), "--blocks", str(BLOCKS),
                    "--dtype", "bf16", "--max-shard-gb", "0.002", "--seed", "7"], check=True, capture_output=True)
    return folder


def fast_recipe(recipe, folder):
    """The recipe with its optimizer steps cut to a few (1000 + 500 per layer would take minutes
    over 280 layers); everything else, formats and ranks included, as shipped."""
    text = recipe.read_text()
    text = re.sub(r"\brotation_steps: *\d+", "rotation_steps: 3", text)
    text = re.sub(r"\bsteps: *\d+", "steps: 3", text)
    path = folder / recipe.name
    path.write_text(text)
    return path


def load_folder(folder):
    """Every tensor and the __metadata__ of a file or a sharded folder, through the safetensors library."""
    folder = pathlib.Path(folder)
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    tensors, metadata = {}, {}
    for f in files:
        with safe_open(str(f), framework="numpy") as h:
            metadata.update(h.metadata() or {})
        for name, value in st.load_file(str(f)).items():
            assert name not in tensors, f"{name} in two shards"
            tensors[name] = value
    return tensors, metadata


def raw_bits(a):
    return a.view(np.uint8).reshape(-1)


def checkpoint_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).glob("*.safetensors*"))}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_quantizes_exactly_the_block_linears(recipe, pixart_model, tmp_path, run_loraq):
    out = tmp_path / "q"
    run_loraq("quantize", pixart_model, "--recipe", fast_recipe(recipe, tmp_path), "-o", out, "--max-shard-gb", "0.004",
              "--no-progress")
    original, _ = load_folder(pixart_model)
    quantized, metadata = load_folder(out)
    layers = layer_table(metadata)
    assert sorted(l["name"] for l in layers) == EXPECTED_LAYERS
    assert len(list(out.glob("*.safetensors"))) > 1, "a 0.004 GB shard limit must give several shards"
    index = json.loads((out / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(quantized)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in quantized.values())
    assert json.loads((out / "config.json").read_text()) == json.loads((pixart_model / "config.json").read_text())

    # Every tensor that is not a selected weight is carried over bit for bit.
    for name, value in original.items():
        if name in EXPECTED_LAYERS:
            assert name not in quantized
        else:
            assert quantized[name].dtype == value.dtype and quantized[name].shape == value.shape, name
            np.testing.assert_array_equal(raw_bits(quantized[name]), raw_bits(value), err_msg=name)

    # The dequantized export: original names, dtypes and shapes; its values are what an independent
    # reading of the stored codes gives, in fp32 bit for bit and rounded to the original bf16.
    run_loraq("export", out, "-o", tmp_path / "deq32.safetensors", "--dequantized", "--dtype", "F32")
    run_loraq("export", out, "-o", tmp_path / "deq", "--dequantized")
    deq32 = st.load_file(str(tmp_path / "deq32.safetensors"))
    deq, _ = load_folder(tmp_path / "deq")
    assert set(deq) == set(original)
    for layer in layers:
        name = layer["name"]
        expected = effective_weight(layer, quantized)
        assert deq32[name].dtype == np.float32
        np.testing.assert_array_equal(raw_bits(deq32[name]), raw_bits(expected), err_msg=name)
        assert deq[name].dtype == original[name].dtype and deq[name].shape == original[name].shape
        np.testing.assert_array_equal(raw_bits(deq[name]), raw_bits(expected.astype(ml_dtypes.bfloat16)), err_msg=name)


def test_rtn_export_equals_fake_quantization_of_the_inputs(pixart_model, tmp_path, run_loraq):
    """With no branch, the effective weight is Q1(W): `loraq cast` of the input (itself checked
    against ml_dtypes and torchao) must give the same bits, in bf16 and in fp32."""
    for recipe in [r for r in RECIPES if r.stem.startswith("rtn-")]:
        fmt = recipe.stem[len("rtn-"):]
        out = tmp_path / recipe.stem
        run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", out, "--no-progress")
        for dtype in ["same", "F32"]:
            run_loraq("export", out, "-o", tmp_path / f"deq-{fmt}-{dtype}.safetensors", "--dequantized", "--dtype", dtype)
            run_loraq("cast", "--format", fmt, "--in", pixart_model / "diffusion_pytorch_model.safetensors.index.json",
                      "--out", tmp_path / f"cast-{fmt}-{dtype}.safetensors", "--out-dtype", dtype)
            deq = st.load_file(str(tmp_path / f"deq-{fmt}-{dtype}.safetensors"))
            cast = st.load_file(str(tmp_path / f"cast-{fmt}-{dtype}.safetensors"))
            for name in EXPECTED_LAYERS:
                assert deq[name].dtype == cast[name].dtype, (fmt, dtype, name)
                np.testing.assert_array_equal(raw_bits(deq[name]), raw_bits(cast[name]), err_msg=f"{fmt} {dtype} {name}")


def test_eval_and_report_agree_with_an_independent_error(pixart_model, tmp_path, run_loraq):
    out = tmp_path / "q"
    run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, "--no-progress")
    original, _ = load_folder(pixart_model)
    quantized, metadata = load_folder(out)
    report = {r["layer"]: r for r in json.loads((out / "quantize_report.json").read_text())}
    run_loraq("eval", out, pixart_model, "--report", tmp_path / "eval")
    evaluated = {r["layer"]: r for r in json.loads((tmp_path / "eval.json").read_text())}
    assert set(report) == set(evaluated) == set(EXPECTED_LAYERS)
    for layer in layer_table(metadata):
        w = original[layer["name"]].astype(np.float64)
        e = effective_weight(layer, quantized).astype(np.float64)
        rel = np.linalg.norm(e - w) / np.linalg.norm(w)
        assert report[layer["name"]]["relative_error"] == pytest.approx(rel, rel=1e-9)
        assert evaluated[layer["name"]]["relative_error"] == pytest.approx(rel, rel=1e-9)
        assert report[layer["name"]]["bits_per_value"] == pytest.approx(4 + 16 / 64)  # sint4: whole blocks of 64
    csv_lines = (out / "quantize_report.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(EXPECTED_LAYERS)
    assert "transformer_blocks.0.attn1.to_q.weight" in (out / "quantize_report.md").read_text()


def test_inspect_marks_the_preset_and_describes_quantized_layers(pixart_model, tmp_path, run_loraq):
    listing = json.loads(run_loraq("inspect", pixart_model, "--preset", "pixart-sigma", "--json").stdout)
    selected = sorted(t["name"] for t in listing["tensors"] if t.get("selected"))
    assert selected == EXPECTED_LAYERS
    out = tmp_path / "q"
    run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "rtn-mxfp4.yaml", "-o", out, "--no-progress")
    text = run_loraq("inspect", out).stdout
    assert "transformer_blocks.27.ff.net.2.weight" in text and "mxfp4" in text


def test_same_bytes_whatever_the_threads(pixart_model, tmp_path, run_loraq):
    recipe = ROOT / "recipes" / "rtn-nvfp4.yaml"
    for threads in [1, 2]:
        run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", tmp_path / f"t{threads}", "--threads", threads,
                  "--no-progress")
    assert checkpoint_bytes(tmp_path / "t1") == checkpoint_bytes(tmp_path / "t2")


def test_sigkill_then_resume_gives_the_same_bytes(pixart_model, tmp_path, run_loraq, loraq_bin):
    recipe = ROOT / "recipes" / "rtn-mxint4.yaml"
    run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", tmp_path / "whole", "--no-progress")

    out = tmp_path / "resumed"
    work = tmp_path / "resumed.partial"
    env = dict(os.environ, LORAQ_DEBUG_LAYER_DELAY_MS="20")
    proc = subprocess.Popen([loraq_bin, "quantize", str(pixart_model), "--recipe", str(recipe), "-o", str(out),
                             "--threads", "2", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(work.glob("layer-*.safetensors"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(list(work.glob("layer-*.safetensors")))
    assert 20 <= done < len(EXPECTED_LAYERS), "the run must be killed midway"
    assert not out.exists()

    refused = run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", out, check=False)
    assert refused.returncode != 0 and "--resume" in refused.stderr

    # Two finished layers damaged since (one cut short, one holding another layer's tensors): the
    # resume names them and quantizes them again, and the bytes are still those of one whole run.
    files = sorted(work.glob("layer-*.safetensors"))
    files[0].write_bytes(files[0].read_bytes()[:100])
    files[2].write_bytes(files[1].read_bytes())
    resumed = run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", out, "--resume", "--no-progress")
    assert f"{done - 2} of {len(EXPECTED_LAYERS)} layers already done" in resumed.stderr
    for damaged in (files[0], files[2]):
        assert f"{damaged} cannot be used" in resumed.stderr and "quantizing that layer again" in resumed.stderr
    assert checkpoint_bytes(out) == checkpoint_bytes(tmp_path / "whole")
    assert not work.exists()
    report = json.loads((out / "quantize_report.json").read_text())
    assert len(report) == len(EXPECTED_LAYERS)


def test_resume_with_another_recipe_is_refused(pixart_model, tmp_path, run_loraq):
    out = tmp_path / "q"
    (tmp_path / "q.partial").mkdir()
    (tmp_path / "q.partial" / "plan.json").write_text("{}")
    result = run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out,
                       "--resume", check=False)
    assert result.returncode != 0 and "another recipe" in result.stderr
    assert not out.exists()


# ---- bad input: a clear error naming the file and tensor, non-zero exit, nothing left behind ----

def assert_clean_failure(result, out, *needles):
    assert result.returncode != 0
    for needle in needles:
        assert str(needle) in result.stderr, f"{needle!r} not in: {result.stderr}"
    assert not out.exists(), "a failed run must not leave an output"
    work = pathlib.Path(str(out) + ".partial")
    finished = list(work.glob("layer-*.safetensors"))
    if finished:  # layers finished before the failure are kept for --resume, and the message says so
        assert f"{len(finished)} finished layers are kept in {work}" in result.stderr
    else:
        assert not work.exists(), "a run that finished nothing leaves no work folder"


def small_model(path, tensors):
    st.save_file(tensors, str(path))
    return path


def block_weights(rng, hidden=64, blocks=1):
    t = {}
    for b in range(blocks):
        for l in BLOCK_LINEARS:
            shape = {"ff.net.0.proj": (4 * hidden, hidden), "ff.net.2": (hidden, 4 * hidden)}.get(l, (hidden, hidden))
            t[f"transformer_blocks.{b}.{l}.weight"] = rng.standard_normal(shape).astype(np.float32)
    return t


def test_nan_weight_names_file_and_tensor(tmp_path, run_loraq):
    t = block_weights(np.random.default_rng(0))
    t["transformer_blocks.0.attn2.to_v.weight"][3, 5] = np.nan
    model = small_model(tmp_path / "nan.safetensors", t)
    out = tmp_path / "q"
    result = run_loraq("quantize", model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, check=False)
    assert_clean_failure(result, out, "nan.safetensors", "transformer_blocks.0.attn2.to_v.weight", "NaN at [3, 5]")


def test_truncated_shard_names_the_file(pixart_model, tmp_path, run_loraq):
    import shutil
    model = tmp_path / "cut"
    shutil.copytree(pixart_model, model)
    shard = sorted(model.glob("*-of-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    out = tmp_path / "q"
    result = run_loraq("quantize", model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, check=False)
    assert_clean_failure(result, out, shard.name)


def test_wrong_shape_for_the_preset_names_the_tensor(tmp_path, run_loraq):
    t = block_weights(np.random.default_rng(1))
    t["transformer_blocks.0.ff.net.2.weight"] = np.ones((64, 4, 4, 16), np.float32)
    model = small_model(tmp_path / "odd.safetensors", t)
    out = tmp_path / "q"
    result = run_loraq("quantize", model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, check=False)
    assert_clean_failure(result, out, "transformer_blocks.0.ff.net.2.weight", "[64, 4, 4, 16]")


def test_recipe_errors_name_file_line_and_key(pixart_model, tmp_path, run_loraq):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nmethod: rtn\nresidual: {format: sint4, roundng: ties-even}\n")
    out = tmp_path / "q"
    result = run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", out, check=False)
    assert_clean_failure(result, out, "bad.yaml:3", "roundng")
    recipe.write_text("name: bad\nmethod: rtn\nresidual: {format: sint5}\n")
    result = run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", out, check=False)
    assert_clean_failure(result, out, "bad.yaml:3", "sint5")


def test_an_output_over_the_input_is_refused_and_the_input_kept(pixart_model, tmp_path, run_loraq):
    """-o naming the input's folder (where the writer would replace the shards and remove the stale
    ones) or one of its files: refused before any work, every input file as it was, for quantize,
    export and cast alike."""
    import shutil
    model = tmp_path / "model"
    shutil.copytree(pixart_model, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    rtn = ROOT / "recipes" / "rtn-sint4.yaml"
    shard = sorted(model.glob("*-of-*.safetensors"))[0]
    index = next(model.glob("*.index.json"))
    for command in (["quantize", model, "--recipe", rtn, "-o", model],
                    ["quantize", index, "--recipe", rtn, "-o", shard],
                    ["quantize", model, "--recipe", rtn, "-o", tmp_path / "." / "model" / ".." / "model"],
                    ["cast", "--format", "mxfp4", "--in", model, "--out", model],
                    ["cast", "--format", "mxfp4", "--in", model, "--out", tmp_path / "q", "--codes-out", shard]):
        result = run_loraq(*command, check=False)
        assert result.returncode != 0, command
        assert len(result.stderr.strip().splitlines()) == 1 and "choose another" in result.stderr, result.stderr
        assert str(shard if command[-1] == shard else command[-1]) in result.stderr, result.stderr
        assert {p.name: p.read_bytes() for p in model.iterdir()} == before, command
        assert not (tmp_path / "q").exists() and not pathlib.Path(str(model) + ".partial").exists()
    q = tmp_path / "q"
    run_loraq("quantize", model, "--recipe", rtn, "-o", q, "--no-progress")
    quantized = checkpoint_bytes(q)
    result = run_loraq("export", q, "-o", q, "--dequantized", check=False)
    assert result.returncode != 0 and "this folder holds the input" in result.stderr, result.stderr
    assert checkpoint_bytes(q) == quantized


def test_bad_options_are_clear_errors(pixart_model, tmp_path, run_loraq):
    """An instruction set this CPU lacks is refused before any work (it used to abort the process from
    inside the layers' threads), and a count out of range says what it expects."""
    out = tmp_path / "q"
    rtn = ROOT / "recipes" / "rtn-sint4.yaml"
    np.save(tmp_path / "x.npy", np.ones((1, 32), np.float32))
    missing = [isa for isa in ("avx512", "avx2")
               if run_loraq("cast", "--format", "sint4", "--in", tmp_path / "x.npy", "--out", tmp_path / "y.npy",
                            "--isa", isa, check=False).returncode != 0]
    for isa in missing[:1]:
        result = run_loraq("quantize", pixart_model, "--recipe", rtn, "-o", out, "--isa", isa, check=False)
        assert result.returncode == 1, result.stderr  # 134 was the abort
        assert f"--isa {isa}: instruction set not available" in result.stderr
        assert_clean_failure(result, out)
    for option, value, wanted in (("--layers-in-flight", "0", "a number > 0"), ("--threads", "-1", "a number >= 0"),
                                  ("--max-shard-gb", "nan", "a number > 0")):
        result = run_loraq("quantize", pixart_model, "--recipe", rtn, "-o", out, option, value, check=False)
        assert result.returncode != 0 and f"{option}: expected {wanted}, got {value}" in result.stderr, result.stderr
        assert_clean_failure(result, out)


def test_failed_run_leaves_an_earlier_output_untouched(pixart_model, tmp_path, run_loraq):
    out = tmp_path / "q"
    run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, "--no-progress")
    before = checkpoint_bytes(out)
    t = block_weights(np.random.default_rng(2))
    t["transformer_blocks.0.attn1.to_q.weight"][0, 0] = np.inf
    model = small_model(tmp_path / "inf.safetensors", t)
    result = run_loraq("quantize", model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out, check=False)
    assert result.returncode != 0 and "transformer_blocks.0.attn1.to_q.weight" in result.stderr
    assert checkpoint_bytes(out) == before


def gpu_visible():
    """A CUDA GPU the driver reports (nvidia-smi lists it); the loraq build may still lack CUDA."""
    import shutil
    if not shutil.which("nvidia-smi"):
        return False
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return result.returncode == 0 and "GPU" in result.stdout


def test_device_cuda_without_a_gpu_is_a_clear_error(pixart_model, tmp_path, run_loraq):
    if gpu_visible():
        pytest.skip("a GPU is visible: test_device_cuda_matches_cpu runs instead")
    out = tmp_path / "q"
    result = run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "loraq-sint4-r128.yaml", "-o", out,
                       "--device", "cuda", "--no-progress", check=False)
    assert result.returncode != 0
    assert "no CUDA GPU" in result.stderr or "without CUDA" in result.stderr, result.stderr
    assert not out.exists() and not pathlib.Path(str(out) + ".partial").exists()
    result = run_loraq("quantize", pixart_model, "--recipe", ROOT / "recipes" / "rtn-sint4.yaml", "-o", out,
                       "--device", "tpu", check=False)
    assert_clean_failure(result, out, "--device tpu", "cpu, cuda or cuda:N")


def test_device_cuda_matches_cpu(pixart_model, tmp_path, run_loraq):
    """On a GPU: LoRaQ's loops on the device give each layer the CPU's quality (relative weight error
    within 2%), and two GPU runs write the same bytes."""
    if not gpu_visible():
        pytest.skip("SKIPPED LOUDLY: no CUDA GPU on this machine")
    recipe = fast_recipe(ROOT / "recipes" / "loraq-sint4-r128.yaml", tmp_path)
    text = recipe.read_text()
    recipe.write_text(text.replace("steps: 3", "steps: 60"))
    reports = {}
    for name, device in [("cpu", "cpu"), ("gpu", "cuda"), ("gpu2", "cuda:0")]:
        run_loraq("quantize", pixart_model, "--recipe", recipe, "-o", tmp_path / name, "--device", device,
                  "--no-progress")
        report = json.loads((tmp_path / name / "quantize_report.json").read_text())
        reports[name] = {row["layer"]: row["relative_error"] for row in report}
    assert reports["cpu"].keys() == reports["gpu"].keys()
    for layer, err in reports["cpu"].items():
        assert reports["gpu"][layer] == pytest.approx(err, rel=0.02), layer
    assert checkpoint_bytes(tmp_path / "gpu") == checkpoint_bytes(tmp_path / "gpu2")
