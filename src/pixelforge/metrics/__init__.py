"""Offline quality metrics: FID/KID on in-project classifier features, conditional accuracy."""
