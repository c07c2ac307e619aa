"""Speed of pixelforge's U-Nets, samplers and data path, side by side with diffusers and denoising-diffusion-pytorch.

    python scripts/benchmark.py --out benchmark.json          # every case (minutes on a CPU)
    python scripts/benchmark.py --quick --no-peers            # tiny sizes, 1-2 iterations: a smoke test
    python scripts/benchmark.py --cases text --compile        # also torch.compile(unet) against eager

Times are medians over timed iterations after warm-up; ours and the peer alternate iteration by iteration, so
load from other processes on the machine falls on both alike. Peers come from the ``bench`` extra
(pip install -e ".[bench]"); without them (or with --no-peers) pixelforge is measured alone.
Sizes live in CONFIG below; QUICK replaces some of them for --quick.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pixelforge.diffusion.samplers import build_sampler
from pixelforge.diffusion.schedule import NoiseSchedule
from pixelforge.modules.unet import UNetModel

REPO = Path(__file__).resolve().parents[1]

CONFIG: dict[str, Any] = {
    # the latent U-Net of the default text-to-image recipe; "large_size" is the second, larger latent size
    "text": {"channels": 4, "size": 8, "batch_size": 32, "large_size": 32, "large_batch_size": 8,
             "model_channels": 64, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
             "num_heads": 4, "context_dim": 128, "tokens": 16, "transformer_depth": 1, "num_groups": 32},
    # pixel-space unconditional U-Net; the peer is denoising-diffusion-pytorch's Unet(dim=model_channels,
    # dim_mults=channel_mult), whose parameter count one res block per level (plus attention at level 2) matches
    "uncond": {"channels": 3, "size": 32, "batch_size": 16, "model_channels": 64, "channel_mult": [1, 2],
               "num_res_blocks": 1, "attention_resolutions": [2], "num_heads": 4, "num_groups": 32},
    "sampling": {"batch_size": 8, "schedule": {"kind": "scaled_linear", "num_timesteps": 1000,
                                               "beta_start": 0.00085, "beta_end": 0.012},
                 "loops": {"dpmpp": 20, "ddim": 50}},
    # step_batch_size: batch of the consuming training step (null: the recipe's loader batch size)
    "data": {"recipes": ["shapes", "digits"], "batches": 20, "step_batch_size": None},
    "timing": {"warmup": 2, "iters": 7, "loop_iters": 3, "matmul_size": 1024},
}
QUICK: dict[str, dict[str, Any]] = {
    "text": {"size": 8, "batch_size": 2, "large_size": 16, "large_batch_size": 1, "model_channels": 32,
             "num_res_blocks": 1, "num_heads": 2, "context_dim": 32, "tokens": 4},
    "uncond": {"size": 8, "batch_size": 2, "model_channels": 32},
    "sampling": {"batch_size": 1, "loops": {"dpmpp": 3, "ddim": 3}},
    "data": {"batches": 1, "step_batch_size": 4},
    "timing": {"warmup": 1, "iters": 1, "loop_iters": 1, "matmul_size": 128},
}
CASES = ("text", "uncond", "sampling", "utilisation", "data")
PEERS = {"diffusers": "diffusers", "ddpm": "denoising_diffusion_pytorch"}

Denoise = Callable[[Tensor, Tensor, Any], Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the records as a JSON list to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1-2 iterations (smoke test)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    parser.add_argument("--no-peers", action="store_true", help="measure pixelforge alone even if peers import")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(unet) against eager (text case, default size)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    return args


def settings(quick: bool) -> dict[str, Any]:
    """CONFIG, with QUICK's values laid over it for --quick."""
    config = copy.deepcopy(CONFIG)
    if quick:
        for section, values in QUICK.items():
            config[section].update(values)
    return config


def import_peers(enabled: bool) -> dict[str, Any]:
    """The peer libraries that import, by short name; none when disabled."""
    peers = {}
    for name, module in PEERS.items() if enabled else ():
        with contextlib.suppress(ImportError):
            peers[name] = importlib.import_module(module)
    return peers


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock interval covers the work on an asynchronous device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for "bf16", a disabled context for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, iters: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, calls alternating between them after ``warmup`` untimed calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _proc_status_kb(key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak memory one call of ``fn`` adds: CUDA allocator peak, or on CPU peak RSS over the RSS before (Linux)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS starts from live memory
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_kb("VmRSS")
        fn()
        return (_proc_status_kb("VmHWM") - base) / 1024
    except (OSError, AttributeError):
        return None


def ms(times: list[float] | None) -> float | None:
    """Median of seconds, in milliseconds."""
    return None if not times else 1e3 * statistics.median(times)


def spread(times: list[float] | None) -> list[float] | None:
    """[min, max] of seconds, in milliseconds."""
    return None if not times else [1e3 * min(times), 1e3 * max(times)]


def count_params(model: nn.Module | None) -> int | None:
    return None if model is None else sum(p.numel() for p in model.parameters())


def record(case: str, precision: str, ours: list[float], peer: str | None, peer_times: list[float] | None,
           ours_params: int | None = None, peer_params: int | None = None, **extra: Any) -> dict[str, Any]:
    """One JSON record: medians, their spread and ours/peer ratio, plus case-specific fields."""
    ours_ms, peer_ms = ms(ours), ms(peer_times)
    return {"case": case, "precision": precision, "ours_ms": ours_ms, "peer": peer, "peer_ms": peer_ms,
            "ratio": None if peer_ms is None else ours_ms / peer_ms, "ours_params": ours_params,
            "peer_params": peer_params, "ours_spread_ms": spread(ours), "peer_spread_ms": spread(peer_times),
            **extra}


# ---------------------------------------------------------------- models


def our_unet(cfg: dict[str, Any], conditional: bool) -> UNetModel:
    """pixelforge's U-Net at ``cfg``'s size; cross-attention SpatialTransformers when ``conditional``."""
    extra = {"context_dim": cfg["context_dim"], "transformer_depth": cfg["transformer_depth"]} if conditional else {}
    return UNetModel(cfg["channels"], cfg["channels"], cfg["model_channels"], cfg["channel_mult"],
                     cfg["num_res_blocks"], cfg["attention_resolutions"], cfg["num_heads"],
                     num_groups=cfg["num_groups"], **extra)


def diffusers_unet(diffusers: Any, cfg: dict[str, Any], size: int) -> nn.Module:
    """diffusers' UNet2DConditionModel with our levels, widths, blocks, attention placement, heads and context."""
    attn = [2**level in cfg["attention_resolutions"] for level in range(len(cfg["channel_mult"]))]
    return diffusers.UNet2DConditionModel(
        sample_size=size, in_channels=cfg["channels"], out_channels=cfg["channels"],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        block_out_channels=tuple(cfg["model_channels"] * m for m in cfg["channel_mult"]),
        layers_per_block=cfg["num_res_blocks"], cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_heads"],  # diffusers' legacy name: this is the number of heads
        transformer_layers_per_block=cfg["transformer_depth"], norm_num_groups=cfg["num_groups"],
        resnet_time_scale_shift="scale_shift",
    )


def ddpm_unet(ddpm: Any, cfg: dict[str, Any]) -> nn.Module:
    """denoising-diffusion-pytorch's Unet with our base width, levels and heads."""
    return ddpm.Unet(dim=cfg["model_channels"], dim_mults=tuple(cfg["channel_mult"]), channels=cfg["channels"],
                     attn_heads=cfg["num_heads"])


def denoiser(model: nn.Module) -> Denoise:
    """``model`` (or its torch.compile wrapper) as ``denoise(x, t, context)``, whatever its calling convention."""
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, UNetModel):
        return lambda x, t, c: model(x, t) if c is None else model(x, t, context=c)
    if type(inner).__name__ == "UNet2DConditionModel":
        return lambda x, t, c: model(x, t, c, return_dict=False)[0]
    return lambda x, t, c: model(x, t)


def batch(cfg: dict[str, Any], size: int, batch_size: int, device: torch.device, conditional: bool
          ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Random inputs, timesteps and (when ``conditional``) context tokens."""
    x = torch.randn(batch_size, cfg["channels"], size, size, device=device)
    t = torch.randint(0, 1000, (batch_size,), device=device)
    c = torch.randn(batch_size, cfg["tokens"], cfg["context_dim"], device=device) if conditional else None
    return x, t, c


def train_step(model: nn.Module, inputs: tuple[Tensor, Tensor, Tensor | None], precision: str,
               device: torch.device) -> Callable[[], None]:
    """One training step: forward under ``precision``, MSE to a target, backward, fused AdamW step."""
    model.train()
    denoise, (x, t, c) = denoiser(model), inputs
    target = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with autocast(device, precision):
            out = denoise(x, t, c)
        F.mse_loss(out.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def forward_pass(model: nn.Module, inputs: tuple[Tensor, Tensor, Tensor | None], precision: str,
                 device: torch.device) -> Callable[[], Tensor]:
    """One inference forward under ``precision``."""
    model.eval()
    denoise, (x, t, c) = denoiser(model), inputs

    def forward() -> Tensor:
        with torch.no_grad(), autocast(device, precision):
            return denoise(x, t, c)

    return forward


# ---------------------------------------------------------------- cases


def compare(case: str, precision: str, fns: dict[str, Callable[[], Any]], models: dict[str, nn.Module],
            peer: str | None, device: torch.device, timing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Time ``fns["ours"]`` against ``fns[peer]`` (if any), with peak memory and parameter counts."""
    times = interleaved(fns, device, timing["warmup"], timing["iters"])
    peaks = {name: peak_memory_mb(fn, device) for name, fn in fns.items()}
    return record(case, precision, times["ours"], peer, times.get(peer), count_params(models["ours"]),
                  count_params(models.get(peer)), ours_peak_mb=peaks["ours"], peer_peak_mb=peaks.get(peer), **extra)


def precisions(device: torch.device) -> list[str]:
    """fp32, plus bf16 where the device runs it (every CPU through autocast; CUDA when it supports bf16)."""
    return ["fp32", "bf16"] if device.type == "cpu" or torch.cuda.is_bf16_supported() else ["fp32"]


def text_cases(cfg: dict[str, Any], peers: dict[str, Any], device: torch.device, precision: str,
               timing: dict[str, Any], compile_: bool) -> list[dict[str, Any]]:
    """Case 1: text-conditioned training step and forward, ours vs UNet2DConditionModel, at two latent sizes."""
    text, records = cfg["text"], []
    for size, batch_size in ((text["size"], text["batch_size"]), (text["large_size"], text["large_batch_size"])):
        torch.manual_seed(0)
        models = {"ours": our_unet(text, conditional=True).to(device)}
        if "diffusers" in peers:
            models["diffusers"] = diffusers_unet(peers["diffusers"], text, size).to(device)
        peer = "diffusers" if "diffusers" in peers else None
        inputs = batch(text, size, batch_size, device, conditional=True)
        shape = f"{text['channels']}x{size}x{size} b{batch_size}"
        for kind, make in (("train", train_step), ("forward", forward_pass)):
            fns = {name: make(model, inputs, precision, device) for name, model in models.items()}
            records.append(compare(f"text_{kind}", precision, fns, models, peer, device, timing, shape=shape,
                                   unit=f"ms/{'step' if kind == 'train' else 'forward'}"))
        if compile_ and size == text["size"]:  # compiling is slow: the default size only
            compiled = {"ours": torch.compile(models["ours"], dynamic=False), "eager": models["ours"]}
            fns = {name: train_step(model, inputs, precision, device) for name, model in compiled.items()}
            start = time.perf_counter()
            fns["ours"]()  # the first call compiles
            compile_s = time.perf_counter() - start
            records.append(compare("text_train_compiled", precision, fns, compiled, "eager", device, timing,
                                   shape=shape, unit="ms/step", compile_s=compile_s))
    return records


def uncond_case(cfg: dict[str, Any], peers: dict[str, Any], device: torch.device, precision: str,
                timing: dict[str, Any]) -> dict[str, Any]:
    """Case 2: unconditional training step, ours vs denoising-diffusion-pytorch's Unet."""
    uncond = cfg["uncond"]
    torch.manual_seed(0)
    models = {"ours": our_unet(uncond, conditional=False).to(device)}
    if "ddpm" in peers:
        models["ddpm"] = ddpm_unet(peers["ddpm"], uncond).to(device)
    inputs = batch(uncond, uncond["size"], uncond["batch_size"], device, conditional=False)
    fns = {name: train_step(model, inputs, precision, device) for name, model in models.items()}
    shape = f"{uncond['channels']}x{uncond['size']}x{uncond['size']} b{uncond['batch_size']}"
    return compare("uncond_train", precision, fns, models, "ddpm" if "ddpm" in peers else None, device, timing,
                   shape=shape, unit="ms/step")


class TimedDenoiser:
    """A denoiser that adds the wall time of each of its calls to ``seconds``, to split model from sampler time."""

    def __init__(self, denoise: Denoise, device: torch.device) -> None:
        self.denoise, self.device, self.seconds = denoise, device, 0.0

    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        sync(self.device)
        start = time.perf_counter()
        out = self.denoise(x, t, cond)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def diffusers_loop(diffusers: Any, name: str, steps: int, schedule: dict[str, Any], model: TimedDenoiser,
                   noise: Tensor, cond: Any) -> Callable[[], Tensor]:
    """diffusers' DPMSolverMultistepScheduler or DDIMScheduler driving ``model`` over trailing timesteps."""
    common = {"num_train_timesteps": schedule["num_timesteps"], "beta_start": schedule["beta_start"],
              "beta_end": schedule["beta_end"], "beta_schedule": schedule["kind"], "timestep_spacing": "trailing"}
    if name == "dpmpp":
        scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **common)
    else:
        scheduler = diffusers.DDIMScheduler(clip_sample=False, **common)

    def loop() -> Tensor:
        scheduler.set_timesteps(steps, device=noise.device)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), t.expand(len(x)), cond)
            x = scheduler.step(eps, t, x, return_dict=False)[0]
        return x

    return loop


def sampling_cases(cfg: dict[str, Any], peers: dict[str, Any], device: torch.device,
                   timing: dict[str, Any]) -> list[dict[str, Any]]:
    """Case 3: seconds per image of whole sampling loops, and each loop's own overhead per step outside the model."""
    text, sampling = cfg["text"], cfg["sampling"]
    torch.manual_seed(0)
    model = our_unet(text, conditional=True).to(device).eval()
    noise, _, cond = batch(text, text["size"], sampling["batch_size"], device, conditional=True)
    schedule = NoiseSchedule(**sampling["schedule"]).to(device)
    records = []
    for name, steps in sampling["loops"].items():
        timed = {"ours": TimedDenoiser(denoiser(model), device)}
        sampler = build_sampler(name, schedule, "eps", steps)
        loops = {"ours": lambda s=sampler, m=timed["ours"]: s.sample(m, noise, cond)}
        if "diffusers" in peers:
            timed["diffusers"] = TimedDenoiser(denoiser(model), device)
            loops["diffusers"] = diffusers_loop(peers["diffusers"], name, steps, sampling["schedule"],
                                                timed["diffusers"], noise, cond)
        iters = timing["loop_iters"]
        with torch.no_grad():
            interleaved(loops, device, timing["warmup"], 0)
            for m in timed.values():
                m.seconds = 0.0
            times = interleaved(loops, device, 0, iters)
        per_image = {k: [s / len(noise) for s in v] for k, v in times.items()}
        model_step = {k: m.seconds / iters / steps for k, m in timed.items()}
        overhead = {k: sum(times[k]) / iters / steps - model_step[k] for k in timed}
        with torch.no_grad():
            peaks = {k: peak_memory_mb(loop, device) for k, loop in loops.items()}
        extra = {f"{k}_{field}": value for k in timed for field, value in (
            ("s_per_image", statistics.median(per_image[k])), ("overhead_ms_per_step", 1e3 * overhead[k]),
            ("overhead_pct_of_step", 100 * overhead[k] / model_step[k]))}
        peer = "diffusers" if "diffusers" in peers else None
        records.append(record(f"sample_{name}_{steps}", "fp32", per_image["ours"], peer, per_image.get(peer),
                              unit="ms/image", ours_peak_mb=peaks["ours"], peer_peak_mb=peaks.get(peer),
                              steps=steps, batch_size=len(noise), **extra))
    return records


def matmul_gflops(device: torch.device, precision: str, n: int, timing: dict[str, Any]) -> float:
    """Dense n x n matmul rate in this run: the processor's practical ceiling for these models."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = interleaved({"mm": lambda: a @ b}, device, timing["warmup"], max(timing["iters"], 3))
    return 2 * n**3 / statistics.median(times["mm"]) / 1e9


def step_flops(step: Callable[[], None]) -> int:
    """FLOPs torch's flop counter attributes to one call of ``step`` (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def utilisation_case(cfg: dict[str, Any], peers: dict[str, Any], device: torch.device, precision: str,
                     timing: dict[str, Any]) -> dict[str, Any]:
    """Case 4: the text training step's FLOP rate against the dense matmul rate measured now."""
    text = cfg["text"]
    torch.manual_seed(0)
    models = {"ours": our_unet(text, conditional=True).to(device)}
    if "diffusers" in peers:
        models["diffusers"] = diffusers_unet(peers["diffusers"], text, text["size"]).to(device)
    inputs = batch(text, text["size"], text["batch_size"], device, conditional=True)
    fns = {name: train_step(model, inputs, precision, device) for name, model in models.items()}
    flops = {name: step_flops(fn) for name, fn in fns.items()}
    result = compare("utilisation", precision, fns, models, "diffusers" if "diffusers" in peers else None, device,
                     timing, unit="ms/step", matmul_gflops=matmul_gflops(device, precision, timing["matmul_size"],
                                                                         timing))
    for name in fns:
        gflops = flops[name] / result[f"{'ours' if name == 'ours' else 'peer'}_ms"] / 1e6
        result.update({f"{name}_flops_per_step": flops[name], f"{name}_gflops": gflops,
                       f"{name}_fraction_of_matmul": gflops / result["matmul_gflops"]})
    return result


def data_case(recipe: str, cfg: dict[str, Any], device: torch.device, timing: dict[str, Any]) -> dict[str, Any]:
    """Case 5: images/s a data recipe's train loader delivers against images/s our training step consumes."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    recipe_cfg = OmegaConf.load(REPO / "configs" / "data" / f"{recipe}.yaml")
    data = instantiate(OmegaConf.create({"seed": 0, "data": recipe_cfg}).data)
    batches = iter(data.train_dataloader())
    next(batches)  # start workers, build the dataset
    loader_times = []
    for _ in range(cfg["data"]["batches"]):
        start = time.perf_counter()
        images = next(batches)["image"].to(device)
        sync(device)
        loader_times.append((time.perf_counter() - start) / len(images))
    loader_peak = peak_memory_mb(lambda: next(batches), device)
    model_cfg = {**cfg["uncond"], "channels": data.channels, "size": data.image_size}
    torch.manual_seed(0)
    model = our_unet(model_cfg, conditional=False).to(device)
    inputs = batch(model_cfg, data.image_size, cfg["data"]["step_batch_size"] or len(images), device,
                   conditional=False)
    step = train_step(model, inputs, "fp32", device)
    step_times = interleaved({"step": step}, device, 1, max(1, timing["iters"] // 3))["step"]
    step_times = [s / len(inputs[0]) for s in step_times]
    delivered, consumed = 1 / statistics.median(loader_times), 1 / statistics.median(step_times)
    return record(f"data_{recipe}", "fp32", loader_times, "train step", step_times, count_params(model),
                  unit="ms/image", ours_peak_mb=loader_peak, peer_peak_mb=peak_memory_mb(step, device),
                  batch_size=len(images), step_batch_size=len(inputs[0]), num_workers=data.num_workers,
                  delivered_images_per_s=delivered,
                  consumed_images_per_s=consumed, headroom=delivered / consumed)


# ---------------------------------------------------------------- report


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(records: list[dict[str, Any]]) -> str:
    """A fixed-width table of the records, then one line per case-specific figure."""
    head = f"{'case':22} {'prec':5} {'shape':14} {'unit':11} {'ours ms':>10} {'min-max':>15} {'peer':11} " \
           f"{'peer ms':>10} {'ratio':>6} {'ours/peer params':>19} {'peak MB ours/peer':>18}"
    lines = [head, "-" * len(head)]
    for r in records:
        lo_hi = "-" if r["ours_spread_ms"] is None else "{:.4g}-{:.4g}".format(*r["ours_spread_ms"])
        params = f"{fmt(r['ours_params'], ',')}/{fmt(r['peer_params'], ',')}"
        peak = f"{fmt(r.get('ours_peak_mb'), '.0f')}/{fmt(r.get('peer_peak_mb'), '.0f')}"
        lines.append(f"{r['case']:22} {r['precision']:5} {r.get('shape', ''):14} {r['unit']:11} "
                     f"{fmt(r['ours_ms'], '.4g'):>10} "
                     f"{lo_hi:>15} {r['peer'] or '-':11} {fmt(r['peer_ms'], '.4g'):>10} {fmt(r['ratio'], '.2f'):>6} "
                     f"{params:>19} {peak:>18}")
    base = {"case", "precision", "shape", "unit", "ours_ms", "peer", "peer_ms", "ratio", "ours_params", "peer_params",
            "ours_spread_ms", "peer_spread_ms", "ours_peak_mb", "peer_peak_mb"}
    for r in records:
        extra = {k: v for k, v in r.items() if k not in base}
        if extra:
            shown = ", ".join(f"{k}={fmt(v, '.4g') if isinstance(v, float) else v}" for k, v in extra.items())
            lines.append(f"  {r['case']} {r['precision']}: {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cfg = settings(args.quick)
    timing = cfg["timing"]
    peers = import_peers(not args.no_peers)
    missing = [PEERS[name] for name in PEERS if name not in peers]
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"peers: {', '.join(peers) or 'none'}"
          + (f" -- measuring pixelforge alone for {', '.join(missing)} (pip install -e '.[bench]')" if missing
             else ""), flush=True)
    records: list[dict[str, Any]] = []
    for precision in precisions(device):
        if "text" in args.cases:
            records += text_cases(cfg, peers, device, precision, timing, args.compile)
        if "uncond" in args.cases:
            records.append(uncond_case(cfg, peers, device, precision, timing))
        if "utilisation" in args.cases:
            records.append(utilisation_case(cfg, peers, device, precision, timing))
    if "sampling" in args.cases:
        records += sampling_cases(cfg, peers, device, timing)
    if "data" in args.cases:
        records += [data_case(recipe, cfg, device, timing) for recipe in cfg["data"]["recipes"]]
    print(table(records))
    if args.out:
        args.out.write_text(json.dumps(records, indent=2))
        print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
