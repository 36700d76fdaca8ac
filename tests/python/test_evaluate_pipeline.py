"""tools/evaluate.py on diffusers text-to-image pipelines (the layout of PixArt-Sigma and SANA
checkpoints), built small and untrained here from diffusers' and transformers' own classes, since no
pretrained weights can be downloaded: the pipeline's transformer is quantized by the recipe, every
configuration's images come from the same prompts and seeds, two runs give identical tables, the
batch size changes no image beyond rounding, and LPIPS / FID say why they were not computed when their
weights are absent."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("loraq.torch")
ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = "a photo of cat dog red blue car tree house on the street in snow".split()


def word_tokenizer(specials: list[str]):
    """A word-level fast tokenizer built in memory (T5's and Gemma's need downloaded files)."""
    vocab = {s: i for i, s in enumerate(specials)} | {w: len(specials) + i for i, w in enumerate(WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token=specials[1],
                                                unk_token="<unk>"), len(vocab)


def pixart(folder: pathlib.Path):
    tokenizer, vocab = word_tokenizer(["<pad>", "</s>", "<unk>"])
    text_encoder = transformers.T5EncoderModel(transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64,
                                                                     num_layers=1, num_heads=4))
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8, num_layers=2, attention_head_dim=32, num_attention_heads=2, in_channels=4, out_channels=8,
        patch_size=2, cross_attention_dim=64, caption_channels=32, norm_type="ada_norm_single",
        use_additional_conditions=False)
    vae = diffusers.AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                  norm_num_groups=8, sample_size=16)
    diffusers.PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                  scheduler=diffusers.DPMSolverMultistepScheduler()).save_pretrained(folder)
    return ["--height", "16", "--width", "16", "--pipeline-arg", "clean_caption=false"]


def sana(folder: pathlib.Path):
    tokenizer, vocab = word_tokenizer(["<pad>", "<eos>", "<unk>", "<bos>"])
    text_encoder = transformers.Gemma2Model(transformers.Gemma2Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16))
    transformer = diffusers.SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=32, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=32, cross_attention_dim=64, caption_channels=32,
        sample_size=16, patch_size=1)
    vae = diffusers.AutoencoderDC(
        in_channels=3, latent_channels=4, encoder_block_types=["ResBlock"] * 2, decoder_block_types=["ResBlock"] * 2,
        encoder_block_out_channels=[8, 8], decoder_block_out_channels=[8, 8], encoder_layers_per_block=[1, 1],
        decoder_layers_per_block=[1, 1], encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()),
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    diffusers.SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                           scheduler=diffusers.DPMSolverMultistepScheduler()).save_pretrained(folder)
    return ["--height", "32", "--width", "32", "--pipeline-arg", "complex_human_instruction=null"]


def evaluate(model, extra, out, *more, recipes=("rtn-sint4", "svdquant-sint4-r32")):
    # The project's recipes, with the layer preset of the model (SANA's includes its 1x1 convolutions).
    preset = "sana" if "sana" in (model / "model_index.json").read_text().lower() else "pixart-sigma"
    folder = out.parent / f"recipes-{preset}"
    folder.mkdir(exist_ok=True)
    for r in recipes:
        text = (ROOT / "recipes" / f"{r}.yaml").read_text()
        assert "preset: pixart-sigma" in text
        (folder / f"{r}.yaml").write_text(text.replace("preset: pixart-sigma", f"preset: {preset}"))
    recipes = [folder / f"{r}.yaml" for r in recipes]
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(out.parent / "torch-home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "tools/evaluate.py"), "--model", str(model), "--recipes",
                             *map(str, recipes), "-n", "4", "--steps", "2", "--capture", "2", "--threads", "2",
                             "--pipeline-arg", "use_resolution_binning=false", "--pipeline-arg",
                             "max_sequence_length=16", *extra, *more, "-o", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("build", [pixart, sana])
def test_pipeline_evaluation(build, tmp_path):
    torch.manual_seed(0)
    extra = build(tmp_path / "model")
    first = evaluate(tmp_path / "model", extra, tmp_path / "a", "--batch", "4")
    assert [r["configuration"] for r in first["rows"]] == ["fp32", "rtn-sint4", "svdquant-sint4-r32"]
    assert first["rows"][0]["psnr_db"] == 99.0 and first["rows"][0]["ssim"] == pytest.approx(1.0)
    for r in first["rows"][1:]:
        assert 0 < r["psnr_db"] < 99 and 0 < r["ssim"] < 1
    # sint4: 4-bit codes and an fp16 scale per 64 values, more where a row ends in a partial block
    # (SANA's 1x1 convolutions here take 80 channels).
    assert 4.25 <= first["rows"][1]["bits_per_value"] < 4.5
    # The quantized images differ from the reference's, the same prompts and seeds otherwise.
    cache = tmp_path / "a" / "images"
    reference, rtn = np.load(cache / "fp32.npz")["images"], np.load(cache / "rtn-sint4.npz")["images"]
    assert reference.dtype == np.uint8 and reference.shape[0] == 4 and reference.shape[-1] == 3
    assert (reference != rtn).any()
    # Different prompts and seeds give different images.
    assert (reference[0] != reference[1]).any()
    md = (tmp_path / "a" / "results.md").read_text()
    # No LPIPS or FID weights in this TORCH_HOME: the columns are '-' and the table says why.
    assert "LPIPS: " in md and "FID: " in md and "| - | - |" in md
    from PIL import Image  # noqa: PLC0415
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.mode == "RGB" and grid.size[1] == 3 * (reference.shape[1] + 2) + 2
    # From scratch again: the same tables.
    evaluate(tmp_path / "model", extra, tmp_path / "b", "--batch", "4")
    for name in ("results.md", "results.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    # A truncated cache file is made again, not a crash, and gives the same table.
    stored = cache / "rtn-sint4.npz"
    stored.write_bytes(stored.read_bytes()[:100])
    assert evaluate(tmp_path / "model", extra, tmp_path / "a", "--batch", "4")["rows"] == first["rows"]
    # Batch size 1: each image's noise depends on its seed alone, so the same images up to the GEMMs'
    # rounding, which changes with the batch (at most a level of 255 here).
    evaluate(tmp_path / "model", extra, tmp_path / "c", "--batch", "1", recipes=())
    single = np.load(tmp_path / "c" / "images" / "fp32.npz")["images"]
    assert np.abs(single.astype(int) - reference).max() <= 1


def test_pipeline_argument_errors(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import eval_text_to_image  # noqa: PLC0415
    assert eval_text_to_image.pipeline_arguments(["a=1", "b=true", "c=text", "d=null"]) == \
        {"a": 1, "b": True, "c": "text", "d": None}
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        eval_text_to_image.pipeline_arguments(["novalue"])
    (tmp_path / "p.txt").write_text("# only a comment\n\n")
    with pytest.raises(SystemExit, match="holds no prompt"):
        eval_text_to_image.read_prompts(tmp_path / "p.txt")
