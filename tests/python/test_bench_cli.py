"""`loraq bench` and the activation metrics, from the command line: the tables agree with each other
and with `loraq quantize` + `loraq eval`; the SVG plots are well-formed XML with one point per
configuration; the output SQNR in the reports equals a numpy recomputation from captured rows and
the dequantized export (written by the safetensors library and read back by it); bad input is refused
with messages that name it."""
import csv
import json
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")

HIDDEN = 128
CONFIGS = ["rtn:sint4", "svd_lowrank:sint4:fp16:r8", "loraq:sint4:mxint8:b132", "rtn:mxfp4",
           "svd_lowrank:mxfp4:fp16:r8", "loraq:mxfp4:mxint8:b132"]
FAST = ["-p", "steps=30", "-p", "rotation_steps=10"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, loraq_bin):
    folder = tmp_path_factory.mktemp("bench") / "transformer"
    make_model = str(__import__("pathlib").Path(loraq_bin).parent / "loraq-make-model")
    subprocess.run([make_model, "-o", str(folder), "--hidden", str(HIDDEN), "--blocks", "2", "--dtype", "F32",
                    "--caption-channels", "256", "--seed", "3"], check=True, capture_output=True)
    return folder


def layer_names(model):
    tensors = st.load_file(str(next(model.glob("*.safetensors"))))
    return {k: v for k, v in tensors.items() if k.startswith("transformer_blocks.") and v.ndim == 2}


@pytest.fixture(scope="module")
def sweep(model, tmp_path_factory, loraq_bin):
    out = tmp_path_factory.mktemp("sweep") / "b"
    args = [loraq_bin, "bench", str(model), "-o", str(out), "--preset", "pixart-sigma", "--no-progress", *FAST,
            "--claim", "loraq<=svd_lowrank<=rtn", "--claim", "rtn<=loraq"]
    for c in CONFIGS:
        args += ["-c", c]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_tables_agree_and_claims_count_the_rows(sweep):
    out, stdout = sweep
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert len(rows) == 20 * len(CONFIGS)  # 2 blocks x 10 linear layers
    with open(out / "bench.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    for j, c in zip(rows, csv_rows):
        assert (j["layer"], j["configuration"]) == (c["layer"], c["configuration"])
        assert float(c["relative_error"]) == pytest.approx(j["relative_error"], rel=1e-5)
    # The summary is the parameter-weighted mean of the rows.
    for conf in report["configurations"]:
        mine = [r for r in rows if r["configuration"] == conf["label"]]
        weights = np.array([r["shape"][0] * r["shape"][1] for r in mine], dtype=float)
        errors = np.array([r["relative_error"] for r in mine])
        assert conf["relative_error"] == pytest.approx(float((weights * errors).sum() / weights.sum()), rel=1e-12)
    # Claims, recounted from the rows.
    by = {(r["layer"], r["configuration"]): r["relative_error"] for r in rows}
    layers = sorted({r["layer"] for r in rows})
    for claim in report["claims"]:
        labels = claim["configurations"]
        holding = sum(all(by[(l, a)] <= by[(l, b)] for a, b in zip(labels, labels[1:])) for l in layers)
        assert claim["holding"] == holding, claim
        assert len(claim["failures"]) == len(layers) - holding
    assert {c["residual"] for c in report["claims"]} == {"sint4", "mxfp4"}
    rtn_first = [c for c in report["claims"] if c["claim"] == "rtn<=loraq"]
    assert all(c["holding"] == 0 and not c["holds_in_aggregate"] for c in rtn_first)
    assert "holds on 0/20 layers, fails in aggregate" in stdout


def test_svg_plots_are_xml_with_one_point_per_configuration(sweep):
    out, _ = sweep
    for residual in ("sint4", "mxfp4"):
        root = ET.parse(out / f"bench-{residual}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        points = [c for c in root.iter("{http://www.w3.org/2000/svg}circle") if c.find("{http://www.w3.org/2000/svg}title") is not None]
        assert len(points) == 3
        assert residual in root.find("{http://www.w3.org/2000/svg}text").text


def test_bench_rows_match_quantize_and_eval(model, sweep, tmp_path, run_loraq):
    """The same configuration through the recipe path: the per-layer errors are the bench's."""
    out, _ = sweep
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmethod: loraq\nresidual: {format: mxfp4}\nbranch: {format: mxint8, budget: 132}\n"
                      "params: {steps: 30, rotation_steps: 10}\nlayers: {preset: pixart-sigma}\n")
    run_loraq("quantize", model, "-r", recipe, "-o", tmp_path / "q", "--no-progress")
    quantized = {r["layer"]: r["relative_error"] for r in json.loads((tmp_path / "q" / "quantize_report.json").read_text())}
    bench = {r["layer"]: r["relative_error"] for r in json.loads((out / "bench.json").read_text())["rows"]
             if r["configuration"] == "loraq:mxfp4:mxint8:b132"}
    assert quantized == bench


def test_output_sqnr_equals_numpy_on_the_export(model, tmp_path, run_loraq):
    rng = np.random.default_rng(0)
    weights = layer_names(model)
    rows = {}
    for name, w in weights.items():
        x = rng.standard_normal((33, w.shape[1])).astype(np.float32)
        x[:, ::16] *= 10  # outlier channels, as captured DiT activations have
        rows[name[: -len(".weight")] + ".input_rows"] = x
    st.save_file(rows, str(tmp_path / "acts.safetensors"))
    (tmp_path / "r.yaml").write_text("name: r\nmethod: svd_lowrank\nresidual: {format: mxint4}\n"
                                     "branch: {format: mxint8, rank: 8}\nlayers: {preset: pixart-sigma}\n")
    run_loraq("quantize", model, "-r", tmp_path / "r.yaml", "-o", tmp_path / "q", "--no-progress",
              "--activations", tmp_path / "acts.safetensors")
    run_loraq("export", tmp_path / "q", "-o", tmp_path / "e.safetensors", "--dequantized", "--dtype", "F32")
    exported = st.load_file(str(tmp_path / "e.safetensors"))
    report = json.loads((tmp_path / "q" / "quantize_report.json").read_text())
    assert len(report) == 20
    for r in report:
        w = weights[r["layer"]].astype(np.float64)
        x = rows[r["layer"][: -len(".weight")] + ".input_rows"].astype(np.float64)
        y, e = x @ w.T, x @ (exported[r["layer"]].astype(np.float64) - w).T
        want = 10 * np.log10((y * y).sum() / (e * e).sum())
        assert r["output_sqnr_db"] == pytest.approx(want, abs=2e-3), r["layer"]
    assert "SQNR dB" in (tmp_path / "q" / "quantize_report.md").read_text()


def test_bad_input_is_named(model, tmp_path, run_loraq):
    def error(*args):
        result = run_loraq("bench", model, "-o", tmp_path / "o", "--no-progress", *args, check=False)
        assert result.returncode != 0
        assert not (tmp_path / "o").exists()  # refused before anything is written
        return result.stderr

    assert "configuration 'loraq:sint4:mxint9:r8'" in error("-c", "loraq:sint4:mxint9:r8")
    assert "unknown format 'mxint9'" in error("-c", "loraq:sint4:mxint9:r8")
    assert "'stepz' belongs to no method" in error("-c", "loraq:sint4:mxint8:r8", "-p", "stepz=3")
    assert "expected NAME=NUMBER" in error("-c", "rtn:sint4", "-p", "steps")
    assert "'loraq' matches 2 configurations" in error("-c", "loraq:sint4:mxint8:r8", "-c", "loraq:sint4:fp16:r8",
                                                       "-c", "rtn:sint4", "--claim", "loraq<=rtn")
    assert "rank 200 exceeds min(out, in) = 128" in error("-c", "svd_lowrank:sint4:fp16:r200")
    st.save_file({"nothing.input_rows": np.ones((2, HIDDEN), np.float32)}, str(tmp_path / "a.safetensors"))
    msg = error("-c", "rtn:sint4", "--preset", "pixart-sigma", "--activations", tmp_path / "a.safetensors")
    assert ("a.safetensors: no tensor 'transformer_blocks.0.attn1.to_k.input_rows' for layer "
            "'transformer_blocks.0.attn1.to_k.weight' (expected [n, 128])") in msg
