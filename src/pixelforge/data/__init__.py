"""Datasets (embedded, procedural, torchvision-backed, folders) and the one LightningDataModule."""

from pixelforge.data.datamodule import ImageDataModule

__all__ = ["ImageDataModule"]
