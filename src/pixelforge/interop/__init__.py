"""Foreign weights in and out: the key names of CompVis / Stability single files (``compvis``)."""
