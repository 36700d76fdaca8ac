"""OpenBLAS's kernels: the command and the Python package ask for the widest ones this CPU runs.

Debian 12's OpenBLAS (0.3.21) gives CPUs newer than itself its SSE3 "Prescott" kernels, several times
slower; loraq sets OPENBLAS_CORETYPE before the library loads (linalg::use_widest_blas_kernels in the
command, loraq/_blas.py in the package), unless the user set it. The expected choice here comes from
/proc/cpuinfo (loraq._blas), independently of the C++ side, which reads CPUID.
"""
import os
import subprocess
import sys

import pytest

from loraq import _blas


def _env_without_choice(**extra):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(extra)
    return env


def _cli_kernels(loraq_bin, env):
    out = subprocess.run([loraq_bin, "--version"], capture_output=True, text=True, timeout=60, env=env, check=True)
    # "loraq 0.1.0 (OpenBLAS kernels: SkylakeX)"
    assert "OpenBLAS kernels: " in out.stdout, out.stdout
    return out.stdout.split("OpenBLAS kernels: ", 1)[1].split(")", 1)[0]


def _wanted_without_env():
    saved = os.environ.pop("OPENBLAS_CORETYPE", None)
    try:
        return _blas.wanted_openblas_kernels()
    finally:
        if saved is not None:
            os.environ["OPENBLAS_CORETYPE"] = saved


def test_command_runs_the_widest_kernels_of_this_cpu(loraq_bin):
    wanted = _wanted_without_env()
    if not wanted:
        pytest.skip("this CPU has neither AVX2 nor AVX-512: loraq leaves OpenBLAS's choice alone")
    assert _cli_kernels(loraq_bin, _env_without_choice()).lower() == wanted.lower()


def test_command_keeps_the_users_choice(loraq_bin):
    if not _wanted_without_env():
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    # Prescott runs on every x86-64 CPU: it is the choice loraq would otherwise replace.
    assert _cli_kernels(loraq_bin, _env_without_choice(OPENBLAS_CORETYPE="Prescott")) == "Prescott"


def test_package_and_command_run_the_same_kernels(loraq_bin):
    code = "import loraq, os; print(loraq.openblas_kernels() + '|' + os.environ.get('OPENBLAS_CORETYPE', ''))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=_env_without_choice(), check=True)
    package_kernels, chosen = out.stdout.strip().split("|")
    assert chosen == _wanted_without_env()
    assert package_kernels == _cli_kernels(loraq_bin, _env_without_choice())


@pytest.mark.parametrize(
    "flags,expected",
    [
        ("fpu sse2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512bw avx512dq avx512vl avx512_vnni", "SkylakeX"),
        ("fpu sse2 avx avx2 fma f16c bmi2", "Haswell"),
        ("fpu sse2 avx avx2 fma bmi2 avx512f avx512bw avx512dq avx512vl", ""),  # no F16C: not loraq's avx2
        ("fpu sse2 sse4_2 avx", ""),
    ],
)
def test_choice_follows_the_cpu_flags(tmp_path, monkeypatch, flags, expected):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert _blas.wanted_openblas_kernels(str(cpuinfo)) == expected
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert _blas.wanted_openblas_kernels(str(cpuinfo)) == ""
    assert _blas.wanted_openblas_kernels(str(tmp_path / "missing")) == ""
