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


def adapted(base: Path) -> sd.DiffusionModel:
    """The tiny SD with rank-4 adapters whose B is random (it starts at zero, which would hide every mistake)."""
    model = sd.load(base, overrides=sd_tiny.TINY)
    add_lora(model.unet, rank=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def test_training_changes_only_the_adapters_and_the_file_is_small(base: Path, tmp_path: Path) -> None:
    model = adapted(base).train()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    trainable = [p for p in model.trained().parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": [PROMPT, "a red cube"]}
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(batch, drop=True)[0].mean().backward()
        optimizer.step()
    changed = {k for k, v in model.unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    state = kohya_state_dict(model.unet, model.unet.num_res_blocks)
    adapter_bytes = sum(v.numel() * v.element_size() for v in state.values())
    base_bytes = sum(v.numel() * v.element_size() for k, v in before.items() if "lora_" not in k)
    assert adapter_bytes < base_bytes / 10
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for k in state)


def test_diffusers_reads_the_adapters_and_computes_the_same(base: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from test_stable_diffusion import diffusers_folder

    model = adapted(base)
    save_file(kohya_state_dict(model.unet, 1), str(tmp_path / "adapter.safetensors"))
    pipe = diffusers.StableDiffusionPipeline.from_single_file(str(base), config=str(diffusers_folder(
        model, tmp_path / "pipeline")), local_files_only=True, safety_checker=None)
    pipe.load_lora_weights(str(tmp_path), weight_name="adapter.safetensors")
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([1, 981])
    with torch.no_grad():
        context, _ = model.conditioner.embedders["caption"].encoder([PROMPT, ""])
        ours = model.unet(x, t, context=context)
        torch.testing.assert_close(ours, pipe.unet(x, t, encoder_hidden_states=context).sample, rtol=0, atol=1e-5)
        plain = sd.load(base, overrides=sd_tiny.TINY)  # merging the file into plain weights is the same model
        assert merge_kohya(plain.unet, kohya_state_dict(model.unet, 1), 1) > 0
        torch.testing.assert_close(plain.unet(x, t, context=context), ours, rtol=0, atol=1e-5)


def test_lora_setup_errors_are_clear(base: Path) -> None:
    model = sd.load(base, overrides=sd_tiny.TINY)
    with pytest.raises(ValueError, match="LoRA rank must be >= 1, got 0"):
        add_lora(model.unet, rank=0)
    with pytest.raises(KeyError, match="adapts 1 layer"):
        merge_kohya(model.unet, {"lora_unet_down_blocks_9_attentions_0_transformer_blocks_0_attn1_to_q.lora_down"
                                 ".weight": torch.zeros(4, 32)}, 1)
    cfg = sd.sd_config("v1", {**sd_tiny.TINY, "ema": {"decay": 0.9}, "ckpt": str(base), "lora": {"rank": 4},
                              "_target_": "pixelforge.interop.stable_diffusion.pretrained"})
    with pytest.raises(InstantiationException, match="set model.ema=null"):
        instantiate(cfg, _convert_="all")


def test_sd_lora_run_writes_its_adapters_and_txt2img_applies_them(base: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    from fake_data import write_captioned_images
    from safetensors.torch import load_file
    from test_sd_finetune import QUIET

    from pixelforge.cli import compose_config, parse
    from pixelforge.train import run

    write_captioned_images(tmp_path / "folder", count=8, size=32)
    run(compose_config(*parse(["-t", "-l", str(tmp_path / "logs"), "experiment=sd_lora", "trainer.max_steps=2",
                               f"data.dataset.root={tmp_path / 'folder'}", "data.image_size=32", f"model.ckpt={base}",
                               *sd_tiny.overrides(), *QUIET])))
    (run_dir,) = (tmp_path / "logs").iterdir()
    scripts = Path(__file__).parents[2] / "scripts"
    adapter = tmp_path / "adapter.safetensors"
    assert runpy.run_path(str(scripts / "convert.py"))["main"](["--ckpt", str(run_dir), "--lora_to", str(adapter)]) == 0
    assert all(key.startswith("lora_unet_") for key in load_file(str(adapter)))
    monkeypatch.setitem(sd.VERSIONS, "v1", ("v1", sd_tiny.TINY))
    txt2img = runpy.run_path(str(scripts / "txt2img.py"))["main"]
    assert txt2img(["--ckpt", str(base), "--lora", str(adapter), "--lora_scale", "0.8", "--n_samples", "1",
                    "--n_iter", "1", "--ddim_steps", "2", "--outdir", str(tmp_path / "out"), "--device", "cpu"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        txt2img(["--ckpt", str(base), "--lora", str(tmp_path / "missing.safetensors"), "--outdir", str(tmp_path)])
    assert exit_info.value.code == 2
