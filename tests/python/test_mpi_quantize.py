"""`mpirun -n 2 loraq quantize`: two processes share the layers (balanced by cost) and write the same
bytes as one process, for a method with a branch and for RTN; and a run that two ranks start is
resumed by one."""
import json
import os
import shutil
import subprocess

import pytest

MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed (openmpi-bin)")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")


@pytest.fixture(scope="module")
def model(tmp_path_factory, loraq_bin):
    folder = tmp_path_factory.mktemp("mpi") / "transformer"
    make_model = os.path.join(os.path.dirname(loraq_bin), "loraq-make-model")
    subprocess.run([make_model, "-o", str(folder), "--hidden", "128", "--blocks", "3", "--caption-channels", "256",
                    "--max-shard-gb", "0.001"], check=True, capture_output=True)
    return folder


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")
            and not p.name.startswith("quantize_report")}


@pytest.mark.parametrize("recipe", ["svd_lowrank", "rtn"])
def test_two_ranks_write_the_bytes_of_one(model, tmp_path, loraq_bin, recipe):
    r = tmp_path / "r.yaml"
    r.write_text(f"name: r\nmethod: {recipe}\nresidual: {{format: mxint4}}\n" +
                 ("branch: {format: mxint8, rank: 16}\n" if recipe != "rtn" else "") + "layers: {preset: pixart-sigma}\n")
    one = subprocess.run([loraq_bin, "quantize", str(model), "-r", str(r), "-o", str(tmp_path / "one"), "--no-progress",
                          "--max-shard-gb", "0.0003"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([MPIRUN, "-n", "2", loraq_bin, "quantize", str(model), "-r", str(r), "-o", str(tmp_path / "two"),
                          "--no-progress", "--max-shard-gb", "0.0003"], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("quantized 30 layers") == 1  # rank 0 reports, once
    assert files(tmp_path / "one") == files(tmp_path / "two")
    assert len(files(tmp_path / "two")) > 2  # sharded output and its index
    assert not (tmp_path / "two.partial").exists()
    rows = json.loads((tmp_path / "two" / "quantize_report.json").read_text())
    assert [x["relative_error"] for x in rows] == [x["relative_error"] for x in
                                                   json.loads((tmp_path / "one" / "quantize_report.json").read_text())]


def test_a_rank_failing_stops_every_rank(model, tmp_path, loraq_bin):
    """A recipe error is the same on every rank; an output folder rank 0 cannot create is not: every
    rank must stop with an error (none may wait forever)."""
    r = tmp_path / "r.yaml"
    r.write_text("name: r\nmethod: rtn\nresidual: {format: sint4}\nlayers: {preset: pixart-sigma}\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run([MPIRUN, "-n", "2", loraq_bin, "quantize", str(model), "-r", str(r), "-o",
                             str(blocker / "out"), "--no-progress"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode != 0
    assert "rank 0 of 2" in result.stderr, result.stderr


def test_killed_two_rank_run_resumes_to_the_same_bytes(model, tmp_path, loraq_bin):
    """Two ranks killed midway leave their finished layers; two ranks resume them, and the output is
    the one process's."""
    import signal
    import time
    r = tmp_path / "r.yaml"
    r.write_text("name: r\nmethod: rtn\nresidual: {format: mxfp4}\nlayers: {preset: pixart-sigma}\n")
    one = subprocess.run([loraq_bin, "quantize", str(model), "-r", str(r), "-o", str(tmp_path / "one"), "--no-progress"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert one.returncode == 0, one.stderr
    cmd = [MPIRUN, "-n", "2", loraq_bin, "quantize", str(model), "-r", str(r), "-o", str(tmp_path / "two"), "--no-progress"]
    slow = dict(ENV, LORAQ_DEBUG_LAYER_DELAY_MS="150")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=slow, start_new_session=True)
    work = tmp_path / "two.partial"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(work.glob("layer-*.safetensors"))) < 6:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # mpirun forwards it to the ranks and waits for them
    proc.wait(timeout=60)
    time.sleep(1)
    done = len(list(work.glob("layer-*.safetensors")))
    time.sleep(1)
    assert len(list(work.glob("layer-*.safetensors"))) == done, "a rank outlived mpirun"
    assert 6 <= done < 30 and not (tmp_path / "two").exists()
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done} of 30 layers already done" in resumed.stderr
    assert files(tmp_path / "one") == files(tmp_path / "two")
