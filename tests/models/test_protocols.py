"""The model families of protocols.py describe the models: checked on the old-run fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_old_checkpoints import load_fixture

from pixelforge.protocols import Classifies, Diffuses, Encodes, Generates, KeepsEMA, Reconstructs, ScoresLikelihood


@pytest.mark.parametrize(("name", "families"), [
    ("autoencoder_kl_shapes", {Reconstructs, Encodes}),
    ("ddpm_mnist5k_cond", {Generates, Diffuses, KeepsEMA}),
    ("ldm_shapes_txt2img", {Generates, Diffuses, KeepsEMA}),
])
def test_each_model_belongs_to_its_families_only(name: str, families: set, tmp_path: Path) -> None:
    model = load_fixture(name, tmp_path)
    every = {Generates, Diffuses, KeepsEMA, Reconstructs, Encodes, Classifies, ScoresLikelihood}
    assert {family for family in every if isinstance(model, family)} == families
