"""What the scripts and a notebook call to use a trained run: text to image, image to image, CompVis's output
folder, latent exploration. Functions raise InferenceError (or the loader's errors); only scripts exit."""

from pixelforge.inference.devices import autocast, best_device
from pixelforge.inference.text_to_image import (
    InferenceError,
    guidance_defaults,
    image_to_image,
    load_image,
    load_text_model,
    output_size,
    read_prompts,
    sample_batches,
    sampler_options,
    text_to_image,
)
from pixelforge.inference.writer import SampleWriter

__all__ = ["InferenceError", "SampleWriter", "autocast", "best_device", "guidance_defaults", "image_to_image",
           "load_image", "load_text_model", "output_size", "read_prompts", "sample_batches", "sampler_options",
           "text_to_image"]
