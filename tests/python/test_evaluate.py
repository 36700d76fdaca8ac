"""tools/evaluate.py end to end on a small untrained DiT (the trained one is issue 6's model): the
tables, grid and timings are written, the unquantized row compares with itself (99 dB, SSIM 1), the
rows follow the recipes, a second run into the same folder reuses every stored configuration, and two
runs from scratch give identical tables."""
import json
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("loraq.torch")
ROOT = pathlib.Path(__file__).resolve().parents[2]
if not pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
    pytest.skip("Fashion-MNIST is not installed (scripts/install-deps.sh installs dataset-fashion-mnist)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=32, in_channels=1, out_channels=1,
                                          num_layers=2, sample_size=28, patch_size=4, num_embeds_ada_norm=10)
    dit.save_pretrained(folder / "transformer", safe_serialization=True)
    sys.path.insert(0, str(ROOT / "tools"))
    import train_dit  # noqa: PLC0415
    diffusers.DDIMScheduler(**train_dit.SCHEDULER).save_pretrained(folder / "scheduler")
    return folder


def evaluate(model, out):
    recipes = [ROOT / "recipes/fashion-dit/rtn-sint4-w4a4.yaml", ROOT / "recipes/fashion-dit/svdquant-sint4-w4a4.yaml"]
    result = subprocess.run([sys.executable, str(ROOT / "tools/evaluate.py"), "--model", str(model), "--recipes",
                             *map(str, recipes), "-n", "12", "--steps", "3", "--capture", "2", "--threads", "2",
                             "--classifier", str(ROOT / "models/fashion-classifier"), "-o", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_evaluation_tables_and_determinism(model, tmp_path):
    first = evaluate(model, tmp_path / "a")
    names = [r["configuration"] for r in first["rows"]]
    assert names == ["fp32", "rtn-sint4-w4a4", "svdquant-sint4-w4a4"]
    fp32 = first["rows"][0]
    assert fp32["psnr_db"] == 99.0 and fp32["ssim"] == pytest.approx(1.0)
    for r in first["rows"][1:]:
        assert r["psnr_db"] < 99 and r["ssim"] < 1 and 0 <= r["class_accuracy"] <= 1
    assert first["rows"][1]["bits_per_value"] == pytest.approx(4 + 16 / 64)  # sint4: int4 codes, an fp16 scale per 64
    for f in ("results.md", "results.csv", "timings.md", "grid.png"):
        assert (tmp_path / "a" / f).exists(), f
    timings = (tmp_path / "a" / "timings.md").read_text()
    again = evaluate(model, tmp_path / "a")  # resumed: every configuration from OUT/images
    assert again["rows"] == first["rows"]
    # The stored times come back as they were: nothing was quantized or generated again.
    assert (tmp_path / "a" / "timings.md").read_text() == timings
    evaluate(model, tmp_path / "b")  # from scratch: no cached images
    assert (tmp_path / "a" / "results.md").read_text() == (tmp_path / "b" / "results.md").read_text()
    assert (tmp_path / "a" / "results.csv").read_text() == (tmp_path / "b" / "results.csv").read_text()


def test_paper_claims_are_checked_per_metric():
    sys.path.insert(0, str(ROOT / "tools"))
    import paper_claims  # noqa: PLC0415

    def row(name, psnr, ssim, fd, acc):
        return {"configuration": name, "psnr_db": psnr, "ssim": ssim, "frechet_distance": fd, "class_accuracy": acc}
    rows = [row("rtn-sint4-w4a4", 15.0, 0.70, 2.0, 0.90), row("svdquant-sint4-w4a4", 18.0, 0.65, 1.0, 0.90),
            row("unrelated", 1.0, 0.1, 9.0, 0.1)]
    text = paper_claims.claims_markdown(rows)
    lines = [line for line in text.splitlines() if line.startswith("| 1 ")]
    # Only the claim whose two configurations were evaluated; PSNR and Frechet hold, SSIM fails, a tie fails.
    assert lines == ["| 1 | svdquant-sint4-w4a4 | rtn-sint4-w4a4 | holds (18 vs 15) | fails (0.65 vs 0.7) | "
                     "holds (1 vs 2) | fails (0.9 vs 0.9) |"]
    assert "2 of 4 (claim, metric) pairs hold" in text


def test_bad_arguments_are_refused_before_any_work(model, tmp_path):
    """Counts out of range, a non-finite guidance and an output folder that cannot be made are usage
    errors (exit 2, one line naming the option) before the model is even loaded; -n 0 used to end in
    a torch.cat traceback, --steps 0 silently meant the default 50."""
    for extra, message in ((["-n", "0"], "--samples 0: expected an integer >= 1"),
                           (["--steps", "0"], "--steps 0: expected an integer >= 1"),
                           (["--guidance", "nan"], "--guidance nan: expected a finite number"),
                           (["--threads", "-2"], "--threads -2: expected an integer >= 0"),
                           (["-o", str(tmp_path / "file" / "out")],
                            f"-o {tmp_path / 'file' / 'out'}: cannot create the output folder (Not a directory)")):
        (tmp_path / "file").write_text("a file where a folder is expected")
        args = ["--model", str(model), "-o", str(tmp_path / "out"), *extra]
        result = subprocess.run([sys.executable, str(ROOT / "tools/evaluate.py"), *args], capture_output=True,
                                text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"evaluate.py: error: {message}" in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "out").exists() or extra[0] == "-o"
