"""LoRA on Stable Diffusion's U-Net through peft: training changes only the adapters, the adapter file is small,
and diffusers' ``load_lora_weights`` on the written file gives the U-Net output of pixelforge's adapted model."""

from __future__ import annotations

from pathlib import Path

import pytest
import sd_tiny
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from pixelforge.interop import stable_diffusion as sd
from pixelforge.interop.lora import kohya_state_dict, merge_kohya
from pixelforge.modules.lora import add_lora

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")
PROMPT = "a photograph of an astronaut riding a horse"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return sd_tiny.write_tiny_sd(tmp_path_factory.mktemp("lora") / "model.safetensors")


def adapted(base: Path, text_encoder: bool = False) -> sd.DiffusionModel:
    """The tiny SD with rank-4 adapters (on the text tower too with ``text_encoder``) whose B is random (it starts
    at zero, which would hide every mistake)."""
    model = sd.load(base, overrides=sd_tiny.TINY)
    add_lora(model.unet, rank=4, alpha=8)
    if text_encoder:
        model.conditioner.embedders["caption"].encoder.add_lora(rank=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def test_training_changes_only_the_adapters_and_the_file_is_small(base: Path, tmp_path: Path) -> None:
    model = adapted(base, text_encoder=True).train()
    tower = model.conditioner.embedders["caption"].encoder
    before = {k: v.clone() for k, v in [*model.unet.state_dict().items(), *tower.model.state_dict().items()]}
    trainable = [p for p in model.trained().parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": [PROMPT, "a red cube"]}
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(batch, drop=True)[0].mean().backward()
        optimizer.step()
    after = {**model.unet.state_dict(), **tower.model.state_dict()}
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("self_attn.q_proj.lora_A" in k for k in changed)  # the text tower's adapters train too
    state = kohya_state_dict(model)
    adapter_bytes = sum(v.numel() * v.element_size() for v in state.values())
    base_bytes = sum(v.numel() * v.element_size() for k, v in before.items() if "lora_" not in k)
    assert adapter_bytes < base_bytes / 10
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for k in state)
    assert "lora_te_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight" in state


def test_diffusers_reads_the_adapters_and_computes_the_same(base: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from test_stable_diffusion import diffusers_folder

    model = adapted(base, text_encoder=True)
    save_file(kohya_state_dict(model), str(tmp_path / "adapter.safetensors"))
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(base), config=str(diffusers_folder(
        model, tmp_path / "pipeline")), local_files_only=True, safety_checker=None)
    pipe.load_lora_weights(str(tmp_path), weight_name="adapter.safetensors")
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([1, 981])
    tokens = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context, _ = model.conditioner.embedders["caption"].encoder([PROMPT, ""])
        torch.testing.assert_close(context, pipe.text_encoder(tokens)[0], rtol=0, atol=1e-5)
        ours = model.unet(x, t, context=context)
        torch.testing.assert_close(ours, pipe.unet(x, t, encoder_hidden_states=context).sample, rtol=0, atol=1e-5)
        plain = sd.load(base, overrides=sd_tiny.TINY)  # merging the file into plain weights is the same model
        assert merge_kohya(plain, kohya_state_dict(model)) > 0
        torch.testing.assert_close(plain.conditioner.embedders["caption"].encoder([PROMPT, ""])[0], context,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(plain.unet(x, t, context=context), ours, rtol=0, atol=1e-5)


def test_lora_setup_errors_are_clear(base: Path) -> None:
    model = sd.load(base, overrides=sd_tiny.TINY)
    with pytest.raises(ValueError, match="LoRA rank must be >= 1, got 0"):
        add_lora(model.unet, rank=0)
    with pytest.raises(KeyError, match="adapts 1 layer"):
        merge_kohya(model, {"lora_unet_down_blocks_9_attentions_0_transformer_blocks_0_attn1_to_q.lora_down"
                                 ".weight": torch.zeros(4, 32)})
    cfg = sd.sd_config("v1", {**sd_tiny.TINY, "ema": {"decay": 0.9}, "ckpt": str(base), "lora": {"rank": 4},
                              "_target_": "pixelforge.interop.stable_diffusion.pretrained"})
    with pytest.raises(InstantiationException, match="set model.ema=null"):
        instantiate(cfg, _convert_="all")


def test_sd_lora_run_checkpoints_its_adapters_alone_resumes_and_txt2img_applies_them(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    from fake_data import write_captioned_images
    from safetensors.torch import load_file
    from test_sd_finetune import QUIET

    from pixelforge.cli import compose_config, parse
    from pixelforge.runs import load_run
    from pixelforge.train import run

    write_captioned_images(tmp_path / "folder", count=8, size=32)
    run(compose_config(*parse(["-t", "-l", str(tmp_path / "logs"), "experiment=sd_lora", "trainer.max_steps=2",
                               f"data.dataset.root={tmp_path / 'folder'}", "data.image_size=32", f"model.ckpt={base}",
                               "model.lora.text_encoder=true", *sd_tiny.overrides(), *QUIET])))
    (run_dir,) = (tmp_path / "logs").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False, mmap=True)
    assert checkpoint["adapters_only"] and all("lora_" in key for key in checkpoint["state_dict"])
    assert any(".encoder.adapters." in key for key in checkpoint["state_dict"])
    assert last.stat().st_size < base.stat().st_size / 5
    _, model = load_run(run_dir)  # the base from model.ckpt, the trained adapters from the run
    assert all(torch.equal(model.state_dict()[k], v) for k, v in checkpoint["state_dict"].items())
    assert torch.equal(model.first_stage.decoder.conv_out.weight, sd.load(base, overrides=sd_tiny.TINY)
                       .first_stage.decoder.conv_out.weight)
    run(compose_config(*parse(["-r", str(run_dir), "-t", "trainer.max_steps=3", "--no-test"])))
    assert torch.load(last, weights_only=False, mmap=True)["global_step"] == 3

    scripts = Path(__file__).parents[2] / "scripts"
    adapter = tmp_path / "adapter.safetensors"
    assert runpy.run_path(str(scripts / "convert.py"))["main"](["--ckpt", str(run_dir), "--lora_to", str(adapter)]) == 0
    assert {key.split("_")[1] for key in load_file(str(adapter))} == {"unet", "te"}
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", sd_tiny.TINY))
    txt2img = runpy.run_path(str(scripts / "txt2img.py"))["main"]
    common = ["--ckpt", str(base), "--n_samples", "1", "--n_iter", "1", "--ddim_steps", "2", "--device", "cpu"]
    assert txt2img([*common, "--lora", str(adapter), "--lora_scale", "0.8", "--precision", "half",
                    "--outdir", str(tmp_path / "out")]) == 0
    with pytest.raises(SystemExit) as exit_info:
        txt2img([*common, "--lora", str(tmp_path / "missing.safetensors"), "--outdir", str(tmp_path)])
    assert exit_info.value.code == 2
