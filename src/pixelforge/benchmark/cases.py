"""One function per benchmark case; each builds what it times (``recipes``), times it against a peer when one
imports (``peers``, ``timing``) and returns records (``report``)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch
from lightning.pytorch.utilities import move_data_to_device

from pixelforge import cli
from pixelforge.benchmark.peers import ddpm_unet, diffusers_loop, diffusers_scheduler, diffusers_unet, with_unet
from pixelforge.benchmark.recipes import Subject, build, compose, recipe, stable_diffusion_model
from pixelforge.benchmark.report import record
from pixelforge.benchmark.steps import conditions, denoiser, forward, train_step
from pixelforge.benchmark.timing import (
    TimedDenoiser,
    count_params,
    default_precisions,
    interleaved,
    matmul_gflops,
    peak_memory_mb,
    precisions,
    step_flops,
    sync,
)
from pixelforge.diffusion.samplers import build_sampler
from pixelforge.models.diffusion import DiffusionModel
from pixelforge.runs import finished_runs

CASES = ("text", "uncond", "sampling", "utilisation", "data", "latents", "sd", "sd_latents", "quality")
# not by default: sd, sd_latents (Stable Diffusion's 860M U-Net, minutes a step on a CPU) and quality (trains the
# recipe)
DEFAULT_CASES = CASES[:-3]

Peers = dict[str, ModuleType]
Settings = dict[str, dict[str, Any]]


def compare(case: str, precision: str, fns: dict[str, Callable[[], Any]], models: dict[str, DiffusionModel],
            peer: str | None, device: torch.device, timing: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Time ``fns["ours"]`` against ``fns[peer]`` (if any), with peak memory and the U-Nets' parameter counts."""
    times = interleaved(fns, device, timing["warmup"], timing["iters"])
    peaks = {name: peak_memory_mb(fn, device) for name, fn in fns.items()}
    return record(case, precision, times["ours"], peer, times.get(peer), count_params(models["ours"].unet),
                  count_params(models[peer].unet) if peer else None, ours_peak_mb=peaks["ours"],
                  peer_peak_mb=peaks.get(peer), **extra)


def described(subject: Subject) -> dict[str, Any]:
    """The record fields naming what was timed: the model, and the U-Net's input shape and channels."""
    n, _, height, width = subject.model.sample_shape(len(subject.batch["image"]))
    channels = subject.model.unet.config["in_channels"]
    return {"model": subject.name, "shape": f"{channels}x{height}x{width} b{n}", "in_channels": channels}


def text_recipe(experiment: str, overrides: Sequence[str], device: torch.device) -> Subject:
    """The experiment's model and batch; it must be a text-conditioned diffusion model."""
    subject = recipe(experiment, overrides, device)
    if not subject.model.text_conditioned:
        raise ValueError(f"--experiment {experiment}: the text cases time a text-conditioned diffusion model; this "
                         f"one is conditioned on {subject.model.conditioner.input_keys or 'nothing'}")
    return subject


def with_diffusers(subject: Subject, peers: Peers) -> dict[str, DiffusionModel]:
    """``{"ours": the model}``, and ``"diffusers"``: the same model around diffusers' U-Net, when diffusers imports."""
    models = {"ours": subject.model}
    if "diffusers" in peers:
        models["diffusers"] = with_unet(subject.model, diffusers_unet(peers["diffusers"], subject.model))
    return models


def model_cases(case: str, subject: Subject, peers: Peers, device: torch.device, precision: str,
                timing: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's training step and a denoiser forward, ours against the same model around diffusers' U-Net."""
    models = with_diffusers(subject, peers)
    peer = "diffusers" if "diffusers" in models else None
    records = []
    for kind, make, unit in (("train", train_step, "ms/step"), ("forward", forward, "ms/forward")):
        fns = {name: make(model, subject.batch, precision, device) for name, model in models.items()}
        records.append(compare(f"{case}_{kind}", precision, fns, models, peer, device, timing, unit=unit,
                               **described(subject)))
    return records


def text_cases(experiment: str, cfg: Settings, peers: Peers, device: torch.device, precision: str,
               compile_: bool) -> list[dict[str, Any]]:
    """Case 1: the recipe's training step and forward at its size and at a larger one, ours vs diffusers' U-Net;
    with ``compile_`` also its ``model.compile=true`` step against eager."""
    text, timing = cfg["recipe"], cfg["timing"]
    records = []
    for overrides in (text["overrides"], [*text["overrides"], *text["large"]]):
        records += model_cases("text", text_recipe(experiment, overrides, device), peers, device, precision, timing)
    if compile_:
        records.append(compiled_case(experiment, text["overrides"], device, precision, timing))
    return records


def compiled_case(experiment: str, overrides: Sequence[str], device: torch.device, precision: str,
                  timing: dict[str, Any]) -> dict[str, Any]:
    """The recipe's training step with its U-Net compiled as ``model.compile=true`` compiles it, against eager."""
    subjects = {"ours": text_recipe(experiment, [*overrides, "model.compile=true"], device),
                "eager": text_recipe(experiment, overrides, device)}
    subjects["ours"].model.on_fit_start()  # where the model compiles its U-Net
    fns = {name: train_step(s.model, s.batch, precision, device) for name, s in subjects.items()}
    start = time.perf_counter()
    fns["ours"]()  # the first call compiles
    compile_s = time.perf_counter() - start
    models = {name: s.model for name, s in subjects.items()}
    return compare("text_train_compiled", precision, fns, models, "eager", device, timing, unit="ms/step",
                   compile_s=compile_s, **described(subjects["eager"]))


def uncond_case(cfg: Settings, peers: Peers, device: torch.device, precision: str) -> dict[str, Any]:
    """Case 2: the unconditional pixel recipe's training step, ours vs the same model around
    denoising-diffusion-pytorch's Unet."""
    uncond = cfg["uncond"]
    subject = recipe(uncond["experiment"], [*uncond["unet"], *uncond["size"]], device)
    models = {"ours": subject.model}
    if "ddpm" in peers:
        models["ddpm"] = with_unet(subject.model, ddpm_unet(peers["ddpm"], subject.model))
    fns = {name: train_step(model, subject.batch, precision, device) for name, model in models.items()}
    return compare("uncond_train", precision, fns, models, "ddpm" if "ddpm" in models else None, device,
                   cfg["timing"], unit="ms/step", **described(subject))


def sd_cases(cfg: Settings, peers: Peers, device: torch.device, precision: str) -> list[dict[str, Any]]:
    """Case 6: Stable Diffusion's training step and forward (random weights), ours vs diffusers' U-Net."""
    sd = cfg["sd"]
    subject = stable_diffusion_model(sd["version"], sd["toy"], sd["batch_size"], device)
    return model_cases("sd", subject, peers, device, precision, cfg["timing"])


def latents_case(subject: Subject, device: torch.device, precision: str, timing: dict[str, Any]) -> dict[str, Any]:
    """Cases 7 and 8: the training step from cached latents (as ``scripts/cache_latents.py`` and
    ``callbacks.latent_cache`` feed it: ours) against the same step encoding its images with the frozen first stage
    (the peer "encoder"), with the peak memory each adds."""
    with torch.no_grad():
        latent = subject.model.first_stage.encode_latent(subject.batch["image"])
    batches = {"ours": {**subject.batch, "latent": latent},
               "encoder": {key: value for key, value in subject.batch.items() if key != "latent"}}
    optimizer = subject.model.optimizer(subject.model.trained().parameters())  # one state: SD's is 7 GB
    fns = {name: train_step(subject.model, batch, precision, device, optimizer) for name, batch in batches.items()}
    return compare("latents_train", precision, fns, dict.fromkeys(fns, subject.model), "encoder", device, timing,
                   unit="ms/step", image_size=subject.batch["image"].shape[-1],
                   first_stage_params=count_params(subject.model.first_stage), **described(subject))


def sampling_cases(experiment: str, cfg: Settings, peers: Peers, device: torch.device) -> list[dict[str, Any]]:
    """Case 3: seconds per image of whole sampling loops over the recipe's denoiser, schedule and target, and each
    loop's own overhead per step outside the model; ours vs diffusers' schedulers."""
    sampling, timing = cfg["sampling"], cfg["timing"]
    subject = recipe(experiment, [*cfg["recipe"]["overrides"], f"data.batch_size={sampling['batch_size']}"], device)
    model = subject.model.eval()
    cond = conditions(model, subject.batch)
    noise = torch.randn(model.sample_shape(len(subject.batch["image"])), device=device)
    peer = "diffusers" if "diffusers" in peers else None
    records = []
    for name, steps in sampling["loops"].items():
        sampler = build_sampler(name, model.schedule, model.prediction_type, steps,
                                clip_x0=1.0 if model.clip_denoised else None, **model.sampling)
        timed = {"ours": TimedDenoiser(denoiser(model), device)}
        loops = {"ours": lambda s=sampler, m=timed["ours"]: s.sample(m, noise, cond)}
        if peer:
            timed[peer] = TimedDenoiser(denoiser(model), device)
            scheduler = diffusers_scheduler(peers[peer], name, model, sampler)
            loops[peer] = diffusers_loop(scheduler, steps, timed[peer], noise, cond)
        iters = timing["loop_iters"]
        with torch.no_grad():
            interleaved(loops, device, timing["warmup"], 0)
            for m in timed.values():
                m.seconds = 0.0
            times = interleaved(loops, device, 0, iters)
            model_step = {k: m.seconds / iters / steps for k, m in timed.items()}
            peaks = {k: peak_memory_mb(loop, device) for k, loop in loops.items()}
        per_image = {k: [s / len(noise) for s in v] for k, v in times.items()}
        overhead = {k: sum(times[k]) / iters / steps - model_step[k] for k in timed}
        extra = {f"{k}_{field}": value for k in timed for field, value in (
            ("s_per_image", statistics.median(per_image[k])), ("overhead_ms_per_step", 1e3 * overhead[k]),
            ("overhead_pct_of_step", 100 * overhead[k] / model_step[k]))}
        records.append(record(f"sample_{name}_{steps}", "fp32", per_image["ours"], peer, per_image.get(peer),
                              unit="ms/image", ours_peak_mb=peaks["ours"], peer_peak_mb=peaks.get(peer),
                              steps=steps, batch_size=len(noise), model=subject.name, **extra))
    return records


def utilisation_case(experiment: str, cfg: Settings, peers: Peers, device: torch.device,
                     precision: str) -> dict[str, Any]:
    """Case 4: the recipe's training step's FLOP rate against the dense matmul rate measured now."""
    timing = cfg["timing"]
    subject = text_recipe(experiment, cfg["recipe"]["overrides"], device)
    models = with_diffusers(subject, peers)
    fns = {name: train_step(model, subject.batch, precision, device) for name, model in models.items()}
    flops = {name: step_flops(fn) for name, fn in fns.items()}
    matmul = matmul_gflops(device, precision, timing["matmul_size"], timing["warmup"], timing["iters"])
    result = compare("utilisation", precision, fns, models, "diffusers" if "diffusers" in models else None, device,
                     timing, unit="ms/step", matmul_gflops=matmul, **described(subject))
    for name in fns:
        gflops = flops[name] / result[f"{'ours' if name == 'ours' else 'peer'}_ms"] / 1e6
        result.update({f"{name}_flops_per_step": flops[name], f"{name}_gflops": gflops,
                       f"{name}_fraction_of_matmul": gflops / matmul})
    return result


def data_case(experiment: str, cfg: Settings, device: torch.device) -> dict[str, Any]:
    """Case 5: images/s the recipe's train loader delivers against images/s its training step consumes."""
    timing = cfg["timing"]
    model, datamodule = build(compose(experiment, cfg["recipe"]["overrides"], device))
    batches = iter(datamodule.train_dataloader())
    next(batches)  # start workers, build the dataset
    loader_times = []
    for _ in range(cfg["data"]["batches"]):
        start = time.perf_counter()
        batch = move_data_to_device(next(batches), device)
        sync(device)
        loader_times.append((time.perf_counter() - start) / len(batch["image"]))
    loader_peak = peak_memory_mb(lambda: next(batches), device)
    n = len(batch["image"])
    step = train_step(model, batch, "fp32", device)
    step_times = [s / n for s in interleaved({"step": step}, device, 1, max(1, timing["iters"] // 3))["step"]]
    delivered, consumed = 1 / statistics.median(loader_times), 1 / statistics.median(step_times)
    return record(f"data_{experiment}", "fp32", loader_times, "train step", step_times, count_params(model.unet),
                  unit="ms/image", ours_peak_mb=loader_peak, peer_peak_mb=peak_memory_mb(step, device),
                  model=experiment, batch_size=n, num_workers=datamodule.num_workers,
                  delivered_images_per_s=delivered, consumed_images_per_s=consumed, headroom=delivered / consumed)


def quality_case(experiment: str, cfg: Settings, logdir: str, device: torch.device) -> dict[str, Any]:
    """Case 9, time to quality: ``main.py -t`` trains the recipe (its first stage and CLIP too, unless they finished
    under ``logdir``) with ``callbacks.quality_curve`` on; the record holds the curve's points (the strict shape fit
    against training wall time), the first time it reached the target, and the whole run's wall time less the
    curve's own sampling, and its peak memory."""
    quality = cfg["quality"]
    accelerator = "cpu" if device.type == "cpu" else "gpu"
    overrides = [f"experiment={experiment}", "-l", logdir, f"trainer.accelerator={accelerator}", "trainer.devices=1",
                 *cfg["recipe"]["overrides"], *quality["overrides"],
                 f"callbacks.quality_curve.every_n_steps={quality['every_n_steps']}",
                 f"callbacks.quality_curve.n_samples={quality['n_samples']}"]
    codes = []
    start = time.perf_counter()
    peak = peak_memory_mb(lambda: codes.append(cli.main(["-t", *overrides])), device)
    seconds = time.perf_counter() - start
    if codes[0]:
        raise RuntimeError(f"training {experiment} for the quality case failed (main.py -t {' '.join(overrides)})")
    run_dir = finished_runs(logdir, experiment)[-1]
    points = json.loads((run_dir / "quality_curve.json").read_text())
    reached = [p["train_seconds"] for p in points if p["shape_fit"] >= quality["target"]]
    return record("time_to_quality", "fp32", [seconds - points[-1]["curve_seconds"]], None, None,
                  unit="ms/recipe", ours_peak_mb=peak, model=experiment, run=str(run_dir),
                  curve=str(run_dir / "quality_curve.png"),
                  target=quality["target"], seconds_to_target=reached[0] if reached else None,
                  final_shape_fit=points[-1]["shape_fit"], points=points)


def run(cases: Sequence[str], experiments: Sequence[str], cfg: Settings, peers: Peers, device: torch.device,
        compile_: bool, only: str | None = None, logdir: str = "logs") -> list[dict[str, Any]]:
    """The records of ``cases``: the recipe cases once per experiment, the timed steps once per precision the
    device computes natively (``only``: that one, e.g. bf16 emulated on a CPU without bf16 units)."""
    records: list[dict[str, Any]] = []
    available = precisions(device)
    if only is not None and only not in available:
        raise ValueError(f"precision {only!r} does not run on {device}; valid: {', '.join(available)}")
    for precision in [only] if only else default_precisions(device):
        for experiment in experiments:
            if "text" in cases:
                records += text_cases(experiment, cfg, peers, device, precision, compile_)
            if "utilisation" in cases:
                records.append(utilisation_case(experiment, cfg, peers, device, precision))
            if "latents" in cases:
                subject = recipe(experiment, cfg["recipe"]["overrides"], device)
                records.append(latents_case(subject, device, precision, cfg["timing"]))
        if "uncond" in cases:
            records.append(uncond_case(cfg, peers, device, precision))
        if "sd" in cases:
            records += sd_cases(cfg, peers, device, precision)
        if "sd_latents" in cases:
            sd = cfg["sd"]
            subject = stable_diffusion_model(sd["version"], sd["toy"], sd["batch_size"], device)
            records.append(latents_case(subject, device, precision, cfg["timing"]))
    for experiment in experiments:
        if "sampling" in cases:
            records += sampling_cases(experiment, cfg, peers, device)
        if "data" in cases:
            records.append(data_case(experiment, cfg, device))
        if "quality" in cases:
            records.append(quality_case(experiment, cfg, logdir, device))
    return records
