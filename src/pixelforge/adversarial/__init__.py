"""GAN objectives and differentiable augmentation: pure functions over discriminator outputs and image batches."""

from pixelforge.adversarial.diffaugment import diff_augment
from pixelforge.adversarial.losses import discriminator_loss, generator_loss, gradient_penalty, r1_penalty

__all__ = ["diff_augment", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty"]
