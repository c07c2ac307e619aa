"""Reconstruction quality per image: MSE, PSNR and SSIM on images in [-1, 1] (data range 2)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.image import structural_similarity_index_measure

from pixelforge.data.shapes import ShapesDataset
from pixelforge.metrics.shape_fidelity import FIT_KEYS, captioned_fit

DATA_RANGE = 2.0  # images live in [-1, 1]


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``B``."""
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, ``B``; identical images give +inf."""
    return 10 * torch.log10(data_range**2 / mse(x, y))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Structural similarity per image (Gaussian window 11, sigma 1.5, as Wang et al. 2004), ``B``.

    Images smaller than the window (e.g. 8x8 digits) use the largest odd window that fits. Computed in float32
    even under autocast: its local variances are differences of near-equal means, which bf16 filtering ruins
    (a bf16 first stage's logged test SSIM read 0.82; in float32 it is 0.95).
    """
    kernel = min(11, (min(x.shape[-2:]) - 1) // 2 * 2 + 1)
    with torch.autocast(x.device.type, enabled=False):
        return structural_similarity_index_measure(x.float(), y.float(), data_range=data_range, kernel_size=kernel,
                                                   sigma=1.5 * kernel / 11, reduction="none")


def reconstruction_metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mse``, ``psnr`` and ``ssim`` per image of reconstructions ``y`` against references ``x``."""
    return {"mse": mse(x, y), "psnr": psnr(x, y), "ssim": ssim(x, y)}


def judged_hits(judge: torch.nn.Module, images: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
    """Per image, 1.0 where ``judge`` labels ``images`` as ``batch`` does: per key it predicts, and on all of them."""
    hits = {f"rec_acc/{key}": (labels.cpu() == batch[key]).float()
            for key, labels in judge.predict(images).items() if key in batch}
    if not hits:
        raise ValueError(f"the judge predicts none of the dataset's keys {sorted(batch)}")
    hits["rec_acc"] = torch.stack(list(hits.values())).prod(0)
    return hits


@torch.no_grad()
def evaluate_reconstructions(model: torch.nn.Module, dataset: Dataset, batch_size: int = 250,
                             device: torch.device | str = "cpu", corrupted: bool = False,
                             seed: int = 0, judge: torch.nn.Module | None = None) -> dict[str, float]:
    """Mean MSE/PSNR/SSIM of ``model.reconstruct`` over ``dataset`` against the clean images.

    With ``corrupted`` (a denoising autoencoder) the model sees ``model.corrupt(x)``, and the corrupted inputs'
    own scores are reported as ``input_*``, so the gain of denoising is visible in one row. With a ``judge``
    (a classifier whose ``predict`` gives ``{key: labels}``), ``rec_acc/<key>`` is the share of reconstructions it
    labels as the dataset does and ``rec_acc`` the share right on every key: for a first stage, the ceiling of the
    conditional accuracy a latent diffusion model on it can reach. On the shapes set, ``shape_fit`` and
    ``shape_iou`` (``metrics.shape_fidelity``) give the same ceiling for the strict shape fit.
    """
    generator = torch.Generator(device).manual_seed(seed)
    sums: dict[str, float] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        clean = batch["image"].to(device)
        inputs = model.corrupt(clean, generator=generator) if corrupted else clean
        reconstructions = model.reconstruct(inputs)
        scores = reconstruction_metrics(clean, reconstructions)
        if corrupted:
            scores.update({f"input_{k}": v for k, v in reconstruction_metrics(clean, inputs).items()})
        if judge is not None:
            scores.update(judged_hits(judge, reconstructions, batch))
        if isinstance(dataset, ShapesDataset):
            fits, iou, _ = captioned_fit(reconstructions.cpu(), {key: batch[key] for key in FIT_KEYS})
            scores.update(shape_fit=fits.float(), shape_iou=iou)
        for name, values in scores.items():
            sums[name] = sums.get(name, 0.0) + values.sum().item()
    return {name: total / len(dataset) for name, total in sums.items()}
