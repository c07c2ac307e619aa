"""What the scripts and a notebook call to use a trained run: sampling, text-to-image, latent exploration."""
