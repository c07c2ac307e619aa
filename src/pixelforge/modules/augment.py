"""SimCLR's random views of a batch of images (Chen et al. 2020), each sample with its own random parameters.

Written by hand because torchvision's v2 transforms draw one set of parameters per call, so they give every image
of a batch the same crop; here a whole batch is augmented in a few tensor operations on its own device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's grayscale
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def gray(y: torch.Tensor) -> torch.Tensor:
    """Luminance ``B,1,H,W`` of images in [0, 1] (a one-channel image is its own)."""
    if y.shape[1] == 1:
        return y
    return sum(w * y[:, i:i + 1] for i, w in enumerate(LUMA))


def rotate_hue(y: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of RGB images in [0, 1] by ``angle`` ``B`` radians in YIQ space (a hue shift)."""
    to_yiq = RGB_TO_YIQ.to(y)
    cos, sin = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(-1, 3, 3)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # B,3,3
    return torch.einsum("bij,bjhw->bihw", matrix, y)


def gaussian_blur(y: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image with its own ``sigma`` ``B`` (pixels): a separable kernel, one group per image and channel."""
    b, c, h, w = y.shape
    offsets = torch.arange(kernel_size, device=y.device, dtype=y.dtype) - kernel_size // 2
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # B*C, K
    pad = kernel_size // 2
    out = F.pad(y.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel[:, None, :, None], groups=b * c)
    return F.conv2d(out, kernel[:, None, None, :], groups=b * c).view(b, c, h, w)


def random_crops(x: torch.Tensor, size: int, stride: int = 1, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """A ``size`` x ``size`` crop of each image of a ``B,C,H,W`` batch at its own random offset, a multiple of
    ``stride`` (a first stage's downsampling factor keeps the crop on the full image's latent grid)."""
    b, _, h, w = x.shape
    if size > min(h, w) or size % stride:
        raise ValueError(f"crop size {size} must be at most the image side {min(h, w)} and a multiple of the "
                         f"stride {stride}")
    top, left = ((torch.randint((n - size) // stride + 1, (b,), generator=generator) * stride).tolist()
                 for n in (h, w))
    return torch.stack([image[:, i:i + size, j:j + size] for image, i, j in zip(x, top, left, strict=True)])


class ViewAugment(nn.Module):
    """A random view of every image of a ``B,C,H,W`` batch in [-1, 1], in SimCLR's order: a random resized crop
    (``crop_scale`` of the area, ``crop_ratio`` aspect) resampled to the input size with a horizontal flip
    (probability ``flip``) and a rotation (uniform in +-``rotate`` degrees; SimCLR has none), colour jitter
    (probability ``jitter``: brightness, contrast, saturation, hue), grayscale (probability ``grayscale``) and
    Gaussian blur (probability ``blur``, sigma in ``blur_sigma`` x 10% of the side). Colour steps that need three
    channels are skipped on one-channel images."""

    def __init__(self, crop_scale: tuple[float, float] = (0.2, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5, rotate: float = 0.0,
                 jitter: float = 0.8, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, grayscale: float = 0.2, blur: float = 0.0,
                 blur_sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {tuple(crop_scale)}")
        for name, p in (("flip", flip), ("jitter", jitter), ("grayscale", grayscale), ("blur", blur)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.flip, self.rotate, self.jitter, self.grayscale, self.blur = flip, rotate, jitter, grayscale, blur
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.blur_sigma = tuple(blur_sigma)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A view of each image; ``generator`` (on the CPU) draws every random parameter."""
        b = len(x)

        def uniform(low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return (low + (high - low) * torch.rand(b, generator=generator)).to(x.device, x.dtype)

        y = (self.crop(x, uniform) + 1) / 2
        if self.jitter > 0:
            y = torch.where((uniform() < self.jitter).view(b, 1, 1, 1), self.color_jitter(y, uniform), y)
        if self.grayscale > 0 and y.shape[1] == 3:
            y = torch.where((uniform() < self.grayscale).view(b, 1, 1, 1), gray(y).expand_as(y), y)
        if self.blur > 0:
            size = max(3, int(0.1 * x.shape[-1]) // 2 * 2 + 1)
            sigma = uniform(*self.blur_sigma) * size / 3
            y = torch.where((uniform() < self.blur).view(b, 1, 1, 1), gaussian_blur(y, sigma, size), y)
        return y.clamp(0, 1) * 2 - 1

    def crop(self, x: torch.Tensor, uniform) -> torch.Tensor:
        """Random resized crop, flip and rotation as one affine resampling (bilinear, reflected at the border)."""
        area = uniform(*self.crop_scale)
        ratio = torch.exp(uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])))
        w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # fractions of the side
        sign = torch.where(uniform() < self.flip, -1.0, 1.0).to(x)
        cx, cy = (uniform(-1, 1) * (1 - w)), (uniform(-1, 1) * (1 - h))
        angle = uniform(-self.rotate, self.rotate) * math.pi / 180
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([w * sign * cos, -h * sin, cx, w * sign * sin, h * cos, cy], dim=1).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def color_jitter(self, y: torch.Tensor, uniform) -> torch.Tensor:
        """Brightness, contrast, saturation and hue, each by its own random factor, clamped to [0, 1] after each."""
        factor = lambda strength: uniform(1 - strength, 1 + strength).view(-1, 1, 1, 1)  # noqa: E731
        y = (y * factor(self.brightness)).clamp(0, 1)
        mean = gray(y).mean((1, 2, 3), keepdim=True)
        y = ((y - mean) * factor(self.contrast) + mean).clamp(0, 1)
        if y.shape[1] == 3:
            luma = gray(y)
            y = (luma + (y - luma) * factor(self.saturation)).clamp(0, 1)
            y = rotate_hue(y, uniform(-self.hue, self.hue) * 2 * math.pi).clamp(0, 1)
        return y
