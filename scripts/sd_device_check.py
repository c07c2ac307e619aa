"""Stable Diffusion on an accelerator, pixelforge beside diffusers on the same machine: U-Net agreement in reduced
precision, text-to-image seconds per image and peak memory (50 PLMS steps, guidance 7.5), and one LoRA training
step's time and memory. Random weights of the full-size architecture (no download); prints a table, writes JSON.

    python scripts/sd_device_check.py --out results/sd_device.json                 # full size, on a GPU
    python scripts/sd_device_check.py --tiny --steps 2 --out /tmp/sd.json          # a seconds-long check on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pixelforge.interop import stable_diffusion
from pixelforge.modules.lora import add_lora

PROMPT = "a photograph of an astronaut riding a horse"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=sorted(stable_diffusion.VERSIONS), default="v1")
    parser.add_argument("--tiny", action="store_true", help="a 64-px toy of the architecture (CPU checks)")
    parser.add_argument("--steps", type=int, default=50, help="PLMS steps per image")
    parser.add_argument("--lora_batch", type=int, default=4, help="batch of the timed LoRA training step")
    parser.add_argument("--out", default="results/sd_device.json")
    return parser.parse_args(argv)


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak GiB allocated on a CUDA device, else 0) of ``run()``, after one warm-up call."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return time.perf_counter() - start, peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import diffusers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    overrides = stable_diffusion.toy(64) if args.tiny else None
    model = stable_diffusion.build(args.version, overrides)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in [*model.unet.parameters(), *model.first_stage.parameters()]:
            p.normal_(0, 0.02)
    folder = stable_diffusion.save_folder(model, Path(tempfile.mkdtemp()) / "pipeline")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=dtype, safety_checker=None)
    pipe = pipe.to(device)
    model = model.to(device).eval()
    size, f = model.image_size, model.downsample_factor
    latents = torch.randn(1, 4, size // f, size // f, generator=torch.Generator().manual_seed(0)).to(device)
    x, t = latents.repeat(2, 1, 1, 1), torch.tensor([1, 981], device=device)
    rows: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                            "version": args.version, "tiny": args.tiny, "size": size, "steps": args.steps}
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        context, _ = model.conditioner.embedders["caption"].encoder([PROMPT, ""])
        ours = model.unet(x, t, context=context).float()
        theirs = pipe.unet(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
    rows["unet_max_abs_diff"] = (ours - theirs).abs().max().item()
    rows["unet_max_abs"] = theirs.abs().max().item()

    def ours_txt2img() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            model.sample(conditions={"caption": [PROMPT]}, noise=latents, sampler="plms", steps=args.steps,
                         scale=7.5)

    def theirs_txt2img() -> None:
        pipe(PROMPT, height=size, width=size, num_inference_steps=args.steps, guidance_scale=7.5,
             latents=latents.to(dtype), output_type="pt")

    rows["pixelforge_s_per_image"], rows["pixelforge_peak_gib"] = timed(device, ours_txt2img)
    rows["diffusers_s_per_image"], rows["diffusers_peak_gib"] = timed(device, theirs_txt2img)
    pipe.to("cpu")  # free the accelerator for the training step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    add_lora(model.unet, rank=4)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.unet.parameters() if p.requires_grad], lr=1e-4)
    batch = {"image": torch.rand(args.lora_batch, 3, size, size, device=device) * 2 - 1,
             "caption": [PROMPT] * args.lora_batch}

    def lora_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                            enabled=device.type == "cuda"):
            loss = model.loss(batch, drop=True)[0].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rows["lora_step_s"], rows["lora_step_peak_gib"] = timed(device, lora_step)
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
