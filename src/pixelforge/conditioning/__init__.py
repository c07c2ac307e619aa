"""What a diffusion model is conditioned on: a Conditioner of named Embedders, each reading one batch key (a caption,
labels, a spatial map), dropping it to its unconditional value with its own ``ucg_rate`` and encoding it into the
U-Net's ``context`` (cross-attention tokens), ``y`` (class labels) or ``concat`` (maps joined to the input)."""

from pixelforge.conditioning.conditioner import Conditioner, masked_mean
from pixelforge.conditioning.embedder import OUTPUTS, Embedder
from pixelforge.conditioning.inputs import Labels, SpatialMap

__all__ = ["OUTPUTS", "Conditioner", "Embedder", "Labels", "SpatialMap", "masked_mean"]
