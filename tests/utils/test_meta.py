"""parameters_on_meta: parameters built without memory or initialisation, buffers real, and the patch undone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelforge.utils.meta import meta_parameters, parameters_on_meta


def test_parameters_go_to_meta_and_buffers_stay_real() -> None:
    with parameters_on_meta():
        net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert meta_parameters(net) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert not net[1].running_var.is_meta and torch.equal(net[1].running_var, torch.ones(4))
    assert all(p.requires_grad for p in net.parameters())
    net.load_state_dict({k: torch.ones_like(v, device="cpu") for k, v in net.state_dict().items()}, assign=True)
    assert meta_parameters(net) == [] and torch.equal(net(torch.ones(2, 3)), net(torch.ones(2, 3)))
    assert not nn.Linear(2, 2).weight.is_meta  # outside the block, modules are built as usual


def test_the_patch_is_undone_when_building_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), parameters_on_meta():
        raise RuntimeError("boom")
    assert not nn.Linear(2, 2).weight.is_meta
