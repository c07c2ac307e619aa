"""What ``scripts/benchmark.py`` measures, one purpose per module: ``settings`` (sizes), ``recipes`` (the models and
batches, built from the experiment configs as training builds them), ``steps`` (the calls timed), ``peers``
(diffusers and denoising-diffusion-pytorch behind our interfaces), ``timing`` (clocks, memory, FLOPs), ``cases``
(one function per case) and ``report`` (records, table). Nothing in the library imports this package."""
