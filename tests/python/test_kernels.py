"""loraq.LinearKernel (the quantized CPU kernels) against the fake-quantized layer computed in
float64 with numpy, within the bound of fp32 accumulation; and loraq.torch's backend="kernel"
against backend="fake_quant" on a diffusers BasicTransformerBlock."""
import numpy as np
import pytest

loraq = pytest.importorskip("loraq", reason="the loraq Python package is not installed (scripts/test.sh runs "
                                            "pip install . first)")

U = 2.0 ** -24


def heavy_tailed(rng, shape):
    return rng.standard_t(4.0, size=shape).astype(np.float32)


def reference(x, residual, down, up, smooth, bias, act1, act2):
    """float64 Y and the per-output bound gamma(n) * (sum|qa1 P| + sum_j |up_j| sum|qa2 down_j| + |b|),
    n counting the fp32 roundings (one per 32-value chunk on the integer path, per term on the float
    path, one per up-projection term, and a few more)."""
    xs = x / smooth[None, :] if smooth is not None else x
    q1 = loraq.fake_quant(np.ascontiguousarray(xs, np.float32), act1) if act1 else xs
    q2 = loraq.fake_quant(np.ascontiguousarray(xs, np.float32), act2) if act2 else xs
    p, d, u = (loraq.unpack(m).astype(np.float64) for m in (residual, down, up))
    t = q2.astype(np.float64) @ d.T
    y = q1.astype(np.float64) @ p.T + t @ u.T + (bias if bias is not None else 0)
    magnitude = np.abs(q1) @ np.abs(p).T + (np.abs(q2) @ np.abs(d).T) @ np.abs(u).T + \
        (np.abs(bias) if bias is not None else 0)
    n = 2 * x.shape[1] + d.shape[0] + 4  # the float path's count bounds the integer path's too
    return y, n * U / (1 - n * U) * magnitude


@pytest.mark.parametrize("residual_format,branch_format,act1,act2,rows,out,inp,rank", [
    ("sint4", "mxint8", "mxint8", "mxint8", 37, 43, 257, 86),
    ("mxint4", "sint4", "mxint4", "mxint8", 19, 72, 160, 62),
    ("sint4", "mxint4", "sint4", "sint4", 5, 24, 100, 9),
    ("mxfp4", "mxfp6_e2m3", "mxfp8_e4m3", "mxint8", 12, 40, 96, 24),   # the float path
    ("sint4", "fp16", None, None, 7, 16, 64, 32),                          # W4A16, 16-bit branch
])
def test_kernel_within_fp32_bound_of_float64_reference(residual_format, branch_format, act1, act2, rows, out, inp, rank):
    rng = np.random.default_rng(rows * 1000 + rank)
    residual = loraq.pack(heavy_tailed(rng, (out, inp)), residual_format)
    down = loraq.pack(heavy_tailed(rng, (rank, inp)), branch_format)
    up = loraq.pack(heavy_tailed(rng, (out, rank)), branch_format)
    smooth = rng.uniform(0.25, 4.0, inp).astype(np.float32)
    bias = heavy_tailed(rng, (out,))
    x = heavy_tailed(rng, (rows, inp))
    kernel = loraq.LinearKernel(residual, down, up, smooth, bias, act1, act2, "test")
    y = kernel.forward(x)
    assert y.shape == (rows, out) and y.dtype == np.float32
    ref, bound = reference(x, residual, down, up, smooth, bias, act1, act2)
    excess = np.abs(y - ref) - bound
    assert excess.max() <= 0, f"worst output exceeds the bound by {excess.max()} ({kernel.describe()})"
    assert ("integer" in kernel.describe()) == (residual_format in ("sint4", "mxint4") and act1 is not None)


def test_kernel_isa_and_threads_give_the_same_bits():
    rng = np.random.default_rng(7)
    residual = loraq.pack(heavy_tailed(rng, (96, 192)), "sint4")
    down, up = loraq.pack(heavy_tailed(rng, (40, 192)), "mxint8"), loraq.pack(heavy_tailed(rng, (96, 40)), "mxint8")
    kernel = loraq.LinearKernel(residual, down, up, None, None, "mxint8", "mxint8")
    x = heavy_tailed(rng, (50, 192))
    first = kernel.forward(x, threads=1, isa="scalar")
    for threads in (1, 2, 3):
        assert np.array_equal(first, kernel.forward(x, threads=threads))
    assert not np.array_equal(first, kernel.forward(x, skip_branch=True))


def test_kernel_bad_input_names_the_layer():
    rng = np.random.default_rng(8)
    residual = loraq.pack(heavy_tailed(rng, (16, 64)), "sint4")
    kernel = loraq.LinearKernel(residual, None, None, None, None, "mxint8", None, "blocks.3.ff")
    with pytest.raises(loraq.Error, match="x has 32 features, the layer takes 64"):
        kernel.forward(heavy_tailed(rng, (4, 32)))
    with pytest.raises(loraq.Error, match="blocks.3.ff: bias has 3 values"):
        loraq.LinearKernel(residual, None, None, None, np.zeros(3, np.float32), "mxint8", None, "blocks.3.ff")
    with pytest.raises(loraq.Error, match="unknown|known"):
        loraq.LinearKernel(residual, None, None, None, None, "mxint9", None)


# ---- loraq.torch backend="kernel" ----------------------------------------------------------------------------

def test_torch_kernel_backend_matches_fake_quant(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    attention = pytest.importorskip("diffusers.models.attention", reason="diffusers is not installed")
    import loraq.torch as lt

    recipe = tmp_path / "w4a8.yaml"
    recipe.write_text("name: w4a8\nmethod: svd_lowrank\nresidual: {format: sint4}\nbranch: {format: mxint8, rank: 24}\n"
                      "activations: {residual: mxint8, branch: mxint8}\nlayers: {preset: pixart-sigma}\n")

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([attention.BasicTransformerBlock(
                128, num_attention_heads=4, attention_head_dim=32, cross_attention_dim=64)])

        def forward(self, x, context):
            return self.transformer_blocks[0](x, encoder_hidden_states=context)

    def build(backend):
        torch.manual_seed(11)
        model = Blocks().eval()
        lt.quantize_module(model, recipe, backend=backend)
        return model

    fake, kernel = build("fake_quant"), build("kernel")
    layers = [m for m in kernel.modules() if isinstance(m, lt.QuantizedLinear)]
    assert len(layers) == 10 and all(m.backend == "kernel" and "integer" in repr(m) for m in layers)
    g = torch.Generator().manual_seed(12)
    x, context = torch.randn(2, 48, 128, generator=g), torch.randn(2, 16, 64, generator=g)
    with torch.no_grad():
        a, b = fake(x, context), kernel(x, context)
    # Per layer the two differ by fp32 accumulation order only; through a block that stays tiny
    # next to the quantization error itself (about 1e-2 at W4A8, test_torch.py).
    assert float((a - b).norm() / a.norm()) < 1e-5
    with pytest.raises(ValueError, match="backend='kernel' does not take unsigned_shift"):
        lt.QuantizedLinear(np.zeros((8, 32), np.float32), backend="kernel", unsigned_shift=0.5,
                           packed=(loraq.pack(np.zeros((8, 32), np.float32), "sint4"), None, None))
    with pytest.raises(ValueError, match="backend must be"):
        lt.QuantizedLinear(np.zeros((8, 32), np.float32), backend="cuda")


# ---- the CUDA kernels from Python (loraq._core.CudaLinearKernel, backend="kernel" on a GPU) ------------------

GPU = pytest.mark.skipif(loraq._core.cuda_device_count() == 0,
                         reason="SKIPPED LOUDLY: no CUDA GPU visible: the GPU kernels ran only as an error")


def w4a8_parts(rng, out=70, inp=257, rank=86):
    """A W4A8 layer with rank 86 (partial chunks and tiles): packed parts, smooth and bias."""
    return (loraq.pack(heavy_tailed(rng, (out, inp)), "sint4"), loraq.pack(heavy_tailed(rng, (rank, inp)), "mxint8"),
            loraq.pack(heavy_tailed(rng, (out, rank)), "mxint8"), rng.uniform(0.25, 4.0, inp).astype(np.float32),
            heavy_tailed(rng, (out,)))


def test_cuda_kernel_without_a_gpu_is_a_clear_error():
    if loraq._core.cuda_device_count() > 0:
        pytest.skip("a GPU is visible: the GPU tests run instead")
    parts = w4a8_parts(np.random.default_rng(20))
    with pytest.raises(loraq.Error, match="none is visible" if loraq._core.cuda_built() else "built without CUDA"):
        loraq._core.CudaLinearKernel(*parts, "mxint8", "mxint8", "blocks.0.ff")
    assert loraq._core.CudaLinearKernel.supports("sint4", "mxint8")
    assert not loraq._core.CudaLinearKernel.supports("mxfp4", "mxint8")


def test_torch_kernel_backend_says_once_why_gpu_inputs_go_to_the_cpu():
    """Where the GPU kernels cannot take a layer, its GPU inputs run on the CPU kernels, with one warning
    and the reason in gpu_fallback. Here (no GPU) construction fails; a quantized intermediate is
    refused before any GPU is asked."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import warnings

    import loraq.torch as lt

    residual, down, up, smooth, bias = w4a8_parts(np.random.default_rng(23))
    values = [loraq.unpack(p) for p in (residual, down, up)]

    def layer(**kwargs):
        return lt.QuantizedLinear(*values, bias, smooth, residual_activation="mxint8", branch_activation="mxint8",
                                  name="blocks.0.ff", backend="kernel", packed=(residual, down, up), **kwargs)

    qt = layer(intermediate_activation="mxint8")
    with pytest.warns(UserWarning, match="'blocks.0.ff': inputs on a GPU run on the CPU kernels: the GPU kernels keep"):
        assert qt._gpu_kernel(0) is None
    assert "intermediate" in qt.gpu_fallback
    if loraq._core.cuda_device_count() == 0:
        plain = layer()
        expected = "none is visible" if loraq._core.cuda_built() else "built without CUDA"
        with pytest.warns(UserWarning, match=expected):
            assert plain._gpu_kernel(0) is None
        assert expected in plain.gpu_fallback
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the second input on that GPU: no second warning
            assert plain._gpu_kernel(0) is None
    assert torch.equal(qt(torch.ones(3, 257)), layer(intermediate_activation="mxint8")(torch.ones(3, 257)))


@GPU
def test_cuda_kernel_on_torch_tensors_equals_the_cpu_kernel_bit_for_bit():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("SKIPPED LOUDLY: this torch has no CUDA")
    rng = np.random.default_rng(21)
    parts = w4a8_parts(rng)
    x = heavy_tailed(rng, (130, 257))
    cpu = loraq.LinearKernel(*parts, "mxint8", "mxint8", "l")
    gpu = loraq._core.CudaLinearKernel(*parts, "mxint8", "mxint8", "l", 0)
    dx = torch.from_numpy(x).cuda()
    dy = torch.empty((130, 70), dtype=torch.float32, device="cuda")
    gpu.forward_device(dx.data_ptr(), 130, dy.data_ptr(), torch.cuda.current_stream().cuda_stream)
    assert np.array_equal(dy.cpu().numpy().view(np.int32), cpu.forward(x).view(np.int32))
    with pytest.raises(loraq.Error, match="forward_device needs x in the memory of GPU 0"):
        gpu.forward_device(torch.from_numpy(x).data_ptr(), 130, dy.data_ptr(), 0)


@GPU
def test_torch_kernel_backend_stays_on_the_gpu(monkeypatch):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("SKIPPED LOUDLY: this torch has no CUDA")
    import loraq.torch as lt

    rng = np.random.default_rng(22)
    residual, down, up, smooth, bias = w4a8_parts(rng)
    values = [loraq.unpack(p) for p in (residual, down, up)]

    def layer(**kwargs):
        return lt.QuantizedLinear(*values, bias, smooth, residual_activation="mxint8", branch_activation="mxint8",
                                  name="l", backend="kernel", packed=(residual, down, up), **kwargs)

    x = torch.from_numpy(heavy_tailed(rng, (2, 65, 257)))
    on_cpu = layer()(x)
    gpu_layer = layer().cuda()

    class NoCpu:
        def forward(self, *args, **kwargs):
            raise AssertionError("an input on the GPU went to the CPU kernels")

    monkeypatch.setattr(gpu_layer, "_kernel", NoCpu())
    on_gpu = gpu_layer(x.cuda())
    assert on_gpu.device.type == "cuda" and gpu_layer.gpu_fallback is None
    assert torch.equal(on_gpu.cpu().view(torch.int32), on_cpu.view(torch.int32))
    # A quantized intermediate is the CPU kernels' alone: the layer says so once and runs there.
    with pytest.warns(UserWarning, match="inputs on a GPU run on the CPU kernels: the GPU kernels keep"):
        y = layer(intermediate_activation="mxint8").cuda()(x.cuda())
    assert y.device.type == "cuda"
    assert torch.equal(y.cpu(), layer(intermediate_activation="mxint8")(x))


# ---- loraq run-linear ------------------------------------------------------------------------------------------

def quantize_one_layer(tmp_path, loraq_bin, tensors, recipe_text):
    """tensors saved with the safetensors library to tmp_path/model.safetensors and quantized by
    `loraq quantize` with the recipe text (name: r); returns the output file."""
    import subprocess

    st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")
    st.save_file(tensors, str(tmp_path / "model.safetensors"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n" + recipe_text)
    quantized = tmp_path / "q.safetensors"
    subprocess.run([loraq_bin, "quantize", str(tmp_path / "model.safetensors"), "-r", str(recipe), "-o", str(quantized)],
                   check=True, capture_output=True, text=True, timeout=300)
    return quantized


def run_linear(loraq_bin, quantized, x_path, *options):
    """`loraq run-linear` on blocks.0.ff of `quantized` with input x_path."""
    import subprocess

    return subprocess.run([loraq_bin, "run-linear", str(quantized), "--layer", "blocks.0.ff", "--input", str(x_path),
                           *options], capture_output=True, text=True, timeout=300)


def test_run_linear_command(tmp_path, loraq_bin):
    """`loraq run-linear` on a `loraq quantize` output: --check passes, Y equals loraq.LinearKernel on
    the layer's packed parts read back by load_quantized's decoder (same kernels: same bits), and a
    wrong layer or input is refused by name."""
    import pathlib
    import subprocess

    st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")
    rng = np.random.default_rng(21)
    weight = heavy_tailed(rng, (96, 160))
    bias = heavy_tailed(rng, (96,))
    quantized = quantize_one_layer(
        tmp_path, loraq_bin, {"blocks.0.ff.weight": weight, "blocks.0.ff.bias": bias},
        "method: svd_lowrank\nresidual: {format: sint4}\nbranch: {format: mxint8, rank: 86}\n"
        "activations: {residual: mxint8, branch: mxint8}\nlayers: {include: ['*.weight']}\n")
    x = heavy_tailed(rng, (33, 160))
    np.save(tmp_path / "x.npy", x)
    result = run_linear(loraq_bin, quantized, tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--check",
                        "--repeat", "3")
    assert result.returncode == 0, result.stderr
    assert "integer sint4 x mxint8" in result.stdout and ": ok" in result.stdout

    tensors = st.load_file(str(quantized))
    def packed(base, fmt, rows, cols):
        return loraq.PackedMatrix(fmt, rows, cols, tensors[base + ".qweight"], tensors[base + ".wscales"])
    kernel = loraq.LinearKernel(packed("blocks.0.ff", "sint4", 96, 160), packed("blocks.0.ff.lora_down", "mxint8", 86, 160),
                                packed("blocks.0.ff.lora_up", "mxint8", 96, 86), None, bias, "mxint8", "mxint8")
    assert np.array_equal(np.load(tmp_path / "y.npy"), kernel.forward(x))

    wrong = subprocess.run([loraq_bin, "run-linear", str(quantized), "--layer", "blocks.9.ff", "--input",
                            str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "no quantized layer 'blocks.9.ff.weight'" in wrong.stderr
    assert "blocks.0.ff.weight" in wrong.stderr
    np.save(tmp_path / "bad.npy", x[:, :100])
    bad = subprocess.run([loraq_bin, "run-linear", str(quantized), "--layer", "blocks.0.ff.weight", "--input",
                          str(tmp_path / "bad.npy")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "expected float32 [rows, 160]" in bad.stderr
    assert not pathlib.Path(tmp_path / "y2.npy").exists()
    # A non-finite input is refused by position, as `cast` refuses one, before anything is written
    # (the kernels would give a NaN row, which --check used to pass: NaN compares false).
    for value, kind in ((np.nan, "NaN"), (-np.inf, "Inf")):
        poisoned = x.copy()
        poisoned[7, 131] = value
        np.save(tmp_path / "poisoned.npy", poisoned)
        result = run_linear(loraq_bin, quantized, tmp_path / "poisoned.npy", "--output", tmp_path / "y2.npy", "--check")
        assert result.returncode != 0 and f"poisoned.npy: holds {kind} at [7, 131]" in result.stderr, result.stderr
        assert not pathlib.Path(tmp_path / "y2.npy").exists()

    # LORAQ_KERNELS forces a kernel set: the scalar one gives the same bits; an unknown one is refused
    # with the sets this CPU runs, and nothing is written.
    import os
    run = [loraq_bin, "run-linear", str(quantized), "--layer", "blocks.0.ff", "--input", str(tmp_path / "x.npy")]
    scalar = subprocess.run(run + ["--output", str(tmp_path / "y_scalar.npy")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "LORAQ_KERNELS": "scalar"})
    assert scalar.returncode == 0 and "(scalar)" in scalar.stdout, scalar.stdout + scalar.stderr
    assert np.array_equal(np.load(tmp_path / "y_scalar.npy"), np.load(tmp_path / "y.npy"))
    bogus = subprocess.run(run + ["--output", str(tmp_path / "y_bogus.npy")], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "LORAQ_KERNELS": "avx9"})
    assert bogus.returncode != 0 and "LORAQ_KERNELS=avx9" in bogus.stderr and "scalar" in bogus.stderr, bogus.stderr
    assert not pathlib.Path(tmp_path / "y_bogus.npy").exists()


def test_run_linear_with_quantized_intermediate(tmp_path, loraq_bin):
    """A recipe with activations.intermediate: `loraq run-linear` runs the up-projection on the integer
    kernels, --check passes (its reference applies Qt to the kernel's own T), and Y equals
    loraq.LinearKernel with the same intermediate_activation; without Qt the output differs."""
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors library is not installed")
    rng = np.random.default_rng(22)
    quantized = quantize_one_layer(
        tmp_path, loraq_bin, {"blocks.0.ff.weight": heavy_tailed(rng, (72, 128))},
        "method: svd_lowrank\nresidual: {format: sint4}\nbranch: {format: mxint8, rank: 40}\n"
        "activations: {residual: mxint8, branch: mxint8, intermediate: mxint8}\nlayers: {include: ['*.weight']}\n")
    x = heavy_tailed(rng, (29, 128))
    np.save(tmp_path / "x.npy", x)
    result = run_linear(loraq_bin, quantized, tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--check")
    assert result.returncode == 0, result.stderr
    assert "up integer mxint8 x mxint8" in result.stdout and ": ok" in result.stdout, result.stdout

    tensors = st.load_file(str(quantized))
    def packed(base, rows, cols, fmt="mxint8"):
        return loraq.PackedMatrix(fmt, rows, cols, tensors[base + ".qweight"], tensors[base + ".wscales"])
    parts = (packed("blocks.0.ff", 72, 128, "sint4"), packed("blocks.0.ff.lora_down", 40, 128),
             packed("blocks.0.ff.lora_up", 72, 40))
    with_qt = loraq.LinearKernel(*parts, None, None, "mxint8", "mxint8", intermediate_activation="mxint8")
    without = loraq.LinearKernel(*parts, None, None, "mxint8", "mxint8")
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y, with_qt.forward(x))
    assert not np.array_equal(y, without.forward(x))
    t = with_qt.intermediate(x)
    assert t.shape == (29, 40) and np.array_equal(t, without.intermediate(x))
