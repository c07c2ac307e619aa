"""Stable Diffusion single files: a tiny random SD 1.x written by pixelforge's exporter is read back exactly, and
diffusers' own ``from_single_file`` reads the same file into a pipeline that computes what pixelforge computes, up
to a 10-step DDIM text-to-image run from the same latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sd_tiny import TINY, randomise

from pixelforge.interop import stable_diffusion as sd

diffusers = pytest.importorskip("diffusers")
PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> tuple[sd.DiffusionModel, Path]:
    model = randomise(sd.build("v1", TINY))
    return model, sd.save(model, tmp_path_factory.mktemp("sd") / "model.safetensors")


def test_a_written_file_loads_back_exactly(single_file) -> None:
    model, path = single_file
    loaded = sd.load(path, overrides=TINY)  # the version is read from the keys
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    tower, theirs = (m.conditioner.embedders["caption"].encoder.model for m in (model, loaded))
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in tower.state_dict().items())
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = {"conditions": {"caption": [PROMPT]}, "noise": noise, "sampler": "plms", "steps": 4, "scale": 7.5}
    torch.testing.assert_close(loaded.sample(**kwargs), model.sample(**kwargs), rtol=0, atol=0)


def diffusers_folder(model: sd.DiffusionModel, root: Path) -> Path:
    """A diffusers pipeline folder of the same tiny architecture (random weights; only its configs are read)."""
    tower = model.conditioner.embedders["caption"].encoder
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                                  block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
    scheduler = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=type(tower.model)(tower.model.config),
                                             tokenizer=tower.tokenizer, unet=unet, scheduler=scheduler,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(root)
    return root


def test_diffusers_reads_the_file_and_computes_the_same(single_file, tmp_path: Path) -> None:
    model, path = single_file
    folder = diffusers_folder(model, tmp_path / "pipeline")
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                              safety_checker=None)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([1, 981])
    tower = model.conditioner.embedders["caption"].encoder
    with torch.no_grad():
        context, _ = tower([PROMPT, ""])
        ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        torch.testing.assert_close(context, pipe.text_encoder(ids)[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(model.unet(x, t, context=context),
                                   pipe.unet(x, t, encoder_hidden_states=context).sample, rtol=0, atol=1e-5)
        image = torch.rand(1, 3, 32, 32) * 2 - 1
        mean = model.first_stage.encode(image).mean
        torch.testing.assert_close(mean, pipe.vae.encode(image).latent_dist.mean, rtol=0, atol=1e-4)
        torch.testing.assert_close(model.first_stage.decoder_output(mean), pipe.vae.decode(mean).sample,
                                   rtol=0, atol=1e-4)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = model.sample(conditions={"caption": [PROMPT]}, noise=latents, sampler="ddim", steps=10, scale=7.5)
    theirs = pipe(PROMPT, height=32, width=32, num_inference_steps=10, guidance_scale=7.5, latents=latents,
                  output_type="pt").images
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=0, atol=1e-3)


def test_bad_files_fail_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="no Stable Diffusion checkpoint"):
        sd.load(tmp_path / "missing.safetensors")
    save_file({"model.diffusion_model.time_embed.0.weight": torch.zeros(1)}, str(tmp_path / "unet_only.safetensors"))
    with pytest.raises(sd.CheckpointError, match="no text tower"):
        sd.load(tmp_path / "unet_only.safetensors")
    with pytest.raises(ValueError, match="unknown Stable Diffusion version 'v3'; valid: v1, v2, v2-v"):
        sd.build("v3")


def test_txt2img_takes_a_single_file_with_compvis_defaults(single_file, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """CompVis's command on a (tiny) SD file: its steps and scale are CompVis's, and --plms runs PLMS."""
    import json
    import runpy

    _, path = single_file
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", TINY))  # the file is tiny; the command is CompVis's
    txt2img = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "txt2img.py"))
    assert txt2img["main"](["--prompt", PROMPT, "--plms", "--ckpt", str(path), "--n_samples", "1", "--n_iter", "1",
                            "--outdir", str(tmp_path), "--device", "cpu"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert (record["sampler"], record["steps"], record["scale"], record["H"]) == ("plms", 50, 7.5, 32)
    assert (tmp_path / "samples" / "00000.png").is_file()


def test_half_precision_weights_sample_what_full_precision_samples(single_file) -> None:
    """--precision half: the networks' weights in bf16 (on the CPU) under autocast land near the fp32 image; the
    schedule stays fp32; fp16/bf16 weights without autocast are refused by name."""
    from pixelforge.inference import text_to_image
    from pixelforge.inference.text_to_image import InferenceError

    _, path = single_file
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    full = text_to_image(sd.load(path, overrides=TINY), [PROMPT], latents=latents, sampler="ddim", steps=5)
    half = sd.load(path, overrides=TINY).weights_to(torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.schedule.alphas_cumprod.dtype == half.scale_factor.dtype == torch.float32
    image = text_to_image(half, [PROMPT], latents=latents, sampler="ddim", steps=5, precision="half")
    assert image.dtype == torch.float32 and (image - full).abs().max() < 0.05
    with pytest.raises(InferenceError, match="torch.bfloat16: sample them with precision 'autocast' or 'half'"):
        text_to_image(half, [PROMPT], latents=latents, sampler="ddim", steps=5)


def test_loading_builds_no_weights_of_its_own_and_reads_straight_into_the_dtype_asked(single_file) -> None:
    """The model is built with its parameters on the meta device and takes the file's tensors as its weights: loading
    draws no random numbers (nothing is initialised only to be overwritten), and ``dtype=bf16`` gives the weights of
    a float32 load halved, with no float32 copy in between."""
    _, path = single_file
    rng = torch.random.get_rng_state()
    full = sd.load(path, overrides=TINY)
    assert torch.equal(torch.random.get_rng_state(), rng)
    half = sd.load(path, overrides=TINY, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert half.schedule.alphas_cumprod.dtype == torch.float32
    reference = full.weights_to(torch.bfloat16).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in half.state_dict().items())


def test_convert_script_rewrites_a_ckpt_as_safetensors_and_refuses_other_architectures(
        single_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    from safetensors.torch import load_file

    model, path = single_file
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", TINY))
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(path)), "global_step": 470000}, pickled)  # CompVis's layout
    convert = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "convert.py"))
    assert convert["main"](["--ckpt", str(pickled), "--to", str(tmp_path / "out.safetensors")]) == 0
    written, original = load_file(str(tmp_path / "out.safetensors")), load_file(str(path))
    assert written.keys() == original.keys() and all(torch.equal(written[k], v) for k, v in original.items())
    with pytest.raises(SystemExit) as exit_info:
        convert["main"](["--ckpt", str(pickled), "--to", str(tmp_path / "out.bin")])
    assert exit_info.value.code == 2

    from pixelforge.conditioning import Conditioner, Embedder
    from pixelforge.modules.encoders import TransformerTextEncoder, WordTokenizer

    own = sd.build("v1", TINY)
    own.conditioner = Conditioner(caption=Embedder(TransformerTextEncoder(WordTokenizer(["a"], 4), 32, 1, 2),
                                                   "caption"))
    with pytest.raises(ValueError, match=r"not Stable Diffusion's architecture.*'caption': 'TransformerTextEncoder'"):
        sd.compvis_state_dict(own)
    patched = {**TINY, "first_stage": {**TINY["first_stage"], "ddconfig": {**TINY["first_stage"]["ddconfig"],
                                                                            "patch_size": 2}}}
    with pytest.raises(ValueError, match=r"not Stable Diffusion's architecture.*2x2 pixel patches"):
        sd.compvis_state_dict(sd.build("v1", patched))
    placed = {**TINY, "unet": {**TINY["unet"], "transformer_pos_embed": True}}
    with pytest.raises(ValueError, match=r"not Stable Diffusion's architecture.*transformer_pos_embed"):
        sd.compvis_state_dict(sd.build("v1", placed))


def test_openclip_text_weights_give_sd2s_penultimate_tokens() -> None:
    """SD 2.x keeps OpenCLIP's text transformer: mapped into transformers' CLIPTextModel it gives what OpenCLIP's
    own blocks give up to the penultimate layer and the final LayerNorm (Stability's FrozenOpenCLIPEmbedder)."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    reference = TextTransformer(context_length=77, vocab_size=49408, width=32, heads=2, layers=3, output_dim=16).eval()
    weights = {k: v for k, v in reference.state_dict().items() if k != "text_projection"}
    tower = sd.clip_text_tower(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128,
                               hidden_act="gelu", layer="penultimate", pad_token="!")
    sd.load_text_weights(tower, sd.openclip_to_transformers(weights))
    prompts = [PROMPT, ""]
    ids = open_clip.tokenize(prompts)
    with torch.no_grad():
        x = reference.token_embedding(ids) + reference.positional_embedding
        for block in reference.transformer.resblocks[:-1]:
            x = block(x, attn_mask=reference.attn_mask)
        expected = reference.ln_final(x)
        tokens, mask = tower(prompts)
    assert mask is None and torch.equal(tower.tokenizer(prompts, padding="max_length", max_length=77,
                                                        return_tensors="pt").input_ids, ids)
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-5)


def test_an_sd2_file_is_written_with_openclip_names_and_read_back(tmp_path: Path) -> None:
    tiny = {**TINY, "unet": {**TINY["unet"], "num_head_channels": 16}}
    model = randomise(sd.build("v2", tiny))
    path = sd.save(model, tmp_path / "v2.safetensors")
    from safetensors.torch import load_file

    keys = load_file(str(path)).keys()
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(key.startswith(sd.CLIP_PREFIX) for key in keys)
    loaded = sd.load(path, overrides=tiny)  # read as 2.x from its OpenCLIP keys
    assert loaded.prediction_type == "eps" and isinstance(loaded.unet.middle_block[1].proj_in, torch.nn.Linear)
    tower, theirs = (m.conditioner.embedders["caption"].encoder.model for m in (model, loaded))
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in tower.state_dict().items())
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert sd.load(path, "v2-v", overrides=tiny).prediction_type == "v"  # 768-v: the same keys, named by hand
    assert (sd.sd_config("v2-v").prediction_type, sd.sd_config("v2-v").image_size) == ("v", 768)


def test_img2img_and_inpainting_take_a_single_file(single_file, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    from PIL import Image

    _, path = single_file
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", TINY))
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "init.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    mask.save(tmp_path / "mask.png")
    img2img = runpy.run_path(str(Path(__file__).parents[2] / "scripts" / "img2img.py"))["main"]
    for extra in ([], ["--mask", str(tmp_path / "mask.png")]):
        assert img2img(["--ckpt", str(path), "--init-img", str(tmp_path / "init.png"), "--strength", "0.5",
                        "--ddim_steps", "4", "--n_samples", "1", "--n_iter", "1", "--outdir", str(tmp_path / "out"),
                        "--device", "cpu", *extra]) == 0
    assert len(list((tmp_path / "out" / "samples").glob("*.png"))) == 2


def test_a_written_diffusers_folder_is_what_diffusers_reads_and_reads_back(single_file, tmp_path: Path) -> None:
    model, _ = single_file
    folder = sd.save_folder(model, tmp_path / "folder")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = model.sample(conditions={"caption": [PROMPT]}, noise=latents, sampler="ddim", steps=10, scale=7.5)
    theirs = pipe(PROMPT, height=32, width=32, num_inference_steps=10, guidance_scale=7.5, latents=latents,
                  output_type="pt").images
    torch.testing.assert_close((ours + 1) / 2, theirs, rtol=0, atol=1e-3)
    loaded = sd.load(folder)  # sizes, version and text tower read from the folder's configs
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    pipe.save_pretrained(tmp_path / "by_diffusers")  # and a folder diffusers itself wrote
    again = sd.load(tmp_path / "by_diffusers")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(loaded.sample(conditions={"caption": [PROMPT]}, noise=latents, sampler="ddim",
                                             steps=10, scale=7.5), ours, rtol=0, atol=1e-5)


def test_an_sd2_diffusers_folder_keeps_the_tower_cut_at_the_penultimate_layer(tmp_path: Path) -> None:
    tiny = {**TINY, "unet": {**TINY["unet"], "num_head_channels": 16}}
    model = randomise(sd.build("v2", tiny))
    folder = sd.save_folder(model, tmp_path / "v2")
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["num_hidden_layers"] == 1
    loaded = sd.load(folder)
    with torch.no_grad():
        ours, theirs = (m.conditioner.embedders["caption"].encoder([PROMPT])[0] for m in (model, loaded))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_convert_writes_a_diffusers_folder_that_txt2img_reads(single_file, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    model, path = single_file
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", TINY))
    scripts = Path(__file__).parents[2] / "scripts"
    assert runpy.run_path(str(scripts / "convert.py"))["main"](["--ckpt", str(path), "--diffusers_to",
                                                                 str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "model_index.json").is_file()
    assert runpy.run_path(str(scripts / "txt2img.py"))["main"](
        ["--ckpt", str(tmp_path / "folder"), "--n_samples", "1", "--n_iter", "1", "--ddim_steps", "2", "--outdir",
         str(tmp_path / "out"), "--device", "cpu"]) == 0
