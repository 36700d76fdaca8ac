"""loraq.torch on pointwise (1x1) convolutions, the linear layers of SANA's GLUMBConv feed-forward
(diffusers' own module): quantize_module swaps in a QuantizedPointwiseConv2d for conv_inverted and
conv_point under the "sana" preset and leaves the depthwise 3x3 conv alone; the quantized block
equals torch's conv2d run with the effective weights; capture_activations records pixels' channel
vectors; load_quantized after `loraq quantize` gives the same layers as quantize_module."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("loraq.torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
sana = pytest.importorskip("diffusers.models.transformers.sana_transformer")
import loraq.torch as lt  # noqa: E402
from loraq.capture import capture_activations  # noqa: E402

POINTWISE = ["transformer_blocks.0.ff.conv_inverted", "transformer_blocks.0.ff.conv_point"]
RECIPE = """name: loraq-sana-test
method: loraq
residual: {format: mxint4}
branch: {format: mxint8, rank: 8}
params: {steps: 40, rotation_steps: 20}
layers: {preset: sana}
"""


def make_block(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    block = torch.nn.Module()
    block.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
    block.transformer_blocks[0].ff = sana.GLUMBConv(64, 64, expand_ratio=2)
    for p in block.parameters():  # larger than the default init, so that 4-bit rounding shows
        p.data.normal_(0, 0.2)
    return block.eval()


def run(block, x):
    with torch.no_grad():
        return block.transformer_blocks[0].ff(x)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "loraq-sana.yaml"
    path.write_text(RECIPE)
    return path


def test_pointwise_convs_quantized_as_their_effective_weight(recipe):
    block, x = make_block(), torch.randn(2, 64, 6, 5)
    reference = run(block, x)
    report = lt.quantize_module(block, recipe)
    assert sorted(r["name"] for r in report["layers"]) == [f"{p}.weight" for p in POINTWISE]
    ff = block.transformer_blocks[0].ff
    assert isinstance(ff.conv_inverted, lt.QuantizedPointwiseConv2d) and isinstance(ff.conv_point, lt.QuantizedPointwiseConv2d)
    assert isinstance(ff.conv_depth, torch.nn.Conv2d)  # depthwise 3x3: not a linear layer
    out = run(block, x)
    # torch's own conv2d with the effective weights, in float64.
    twin = make_block().double()
    tff = twin.transformer_blocks[0].ff
    for name in ("conv_inverted", "conv_point"):
        getattr(tff, name).weight.data = getattr(ff, name).effective_weight().double()[:, :, None, None]
    expected = run(twin, x.double())
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out, reference, atol=1e-3)  # 4-bit weights do change the output


def test_capture_records_pixels(recipe):
    block, x = make_block(), torch.randn(2, 64, 4, 3)
    stats = capture_activations(block, lambda: run(block, x), recipe=recipe, max_rows=1000)
    pixels = x.movedim(1, -1).reshape(-1, 64).numpy()
    rows = stats[POINTWISE[0]].rows
    assert rows.shape == (24, 64)  # every pixel (2 x 4 x 3), each a channel vector of the input
    assert sorted(map(tuple, rows)) == sorted(map(tuple, pixels))
    np.testing.assert_array_equal(stats[POINTWISE[0]].absmax, np.abs(pixels).max(axis=0))


def test_load_quantized_equals_quantize_module(recipe, run_loraq, tmp_path):
    block = make_block()
    safetensors_torch.save_file({k: v.contiguous() for k, v in block.state_dict().items()}, tmp_path / "block.safetensors")
    run_loraq("quantize", tmp_path / "block.safetensors", "--recipe", recipe, "-o", tmp_path / "q", "--threads", "2")
    loaded = make_block()
    assert sorted(lt.load_quantized(loaded, tmp_path / "q")) == POINTWISE
    direct = make_block()
    lt.quantize_module(direct, recipe)
    x = torch.randn(1, 64, 5, 5)
    assert torch.equal(run(loaded, x), run(direct, x))
