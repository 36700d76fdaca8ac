"""bench/sass_mix.py, the issue-slot count of the GPU kernels' inner loops: its reading of a
cuobjdump listing (loops found by their backward branches, the innermost one holding an IMMA, the
loop around it), and, where the CUDA backend was built and a cuobjdump is at hand, what it reads off
the real kernels."""
import importlib.util
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sass_mix", ROOT / "bench" / "sass_mix.py")
sass_mix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_mix)

LISTING = """
	code for sm_90
		Function : _Z6kernelv
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   MOV R1, c[0x0][0x28] ;                     /* 0x00000a0000017a02 */
        /*0010*/                   LDS R2, [R3] ;                             /* 0x0000000003027984 */
        /*0020*/                   FFMA R1, R2, R3, R1 ;                      /* 0x0000000302017223 */
        /*0030*/                   IMMA.16832.S8.S8 R4, R8.ROW, R12.COL, RZ ; /* 0x0000000c08047237 */
        /*0040*/               @P0 BRA 0x20 ;                                 /* 0xfffffffc00f40947 */
        /*0050*/              @!P1 BRA 0x10 ;                                 /* 0xfffffff800ec9947 */
        /*0060*/                   EXIT ;                                     /* 0x000000000000794d */
		Function : _Z5otherv
        /*0000*/                   FADD R1, R1, 1 ;                           /* 0x3f80000001017421 */
        /*0010*/               @P0 BRA 0x0 ;                                  /* 0xfffffffc00f80947 */
        /*0020*/                   BRA 0x30 ;                                 /* 0xfffffffc00f80947 */
"""


def test_reads_the_innermost_mma_loop_and_the_one_around_it():
    reports = list(sass_mix.loop_reports(LISTING))
    assert [r["name"] for r in reports] == ["_Z6kernelv"]  # _Z5otherv's loop holds no IMMA
    r = reports[0]
    assert r["instructions"] == 3 and r["imma"] == 1 and r["macs"] == 16 * 8 * 32
    assert dict(r["mix"]) == {"FFMA": 1, "IMMA": 1, "BRA": 1}
    assert r["ceiling"] == pytest.approx(4 * 4096 / 3)
    assert r["outer_extra"] == 2  # the LDS at 0x10 and the outer branch


def test_the_real_kernels():
    obj = ROOT / "build/src/CMakeFiles/loraq_cuda.dir/cuda/linear_cuda.cu.o"
    if not obj.exists():
        pytest.skip("the CUDA backend is not built here")
    try:
        tool = sass_mix.find_cuobjdump()
    except SystemExit:
        pytest.skip("no cuobjdump here")
    sass = subprocess.run([tool, "-sass", "-arch", "sm_90", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    def kind(name):
        variant = next(v for v in ("fused", "pipelined", "int8_gemm_kernel") if v in name)
        return variant, "ILb1" in name
    per_imma = {kind(r["name"]): r["instructions"] / r["imma"] for r in sass_mix.loop_reports(sass)}
    # Both GEMM variants with and without the epilogue, and the fused layer kernel.
    assert len(per_imma) == 5, per_imma
    # What docs/kernels.md claims for the pipelined variant: fewer issued instructions an IMMA in its
    # main loop (whole stages, loads included) than the simple kernel's loop.
    for epilogue in (False, True):
        assert per_imma[("pipelined", epilogue)] < per_imma[("int8_gemm_kernel", epilogue)], per_imma
    assert per_imma[("fused", False)] < per_imma[("int8_gemm_kernel", True)], per_imma
