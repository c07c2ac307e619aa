"""Shared fixtures: torchvision's md5 checks relaxed for fake files, fake dataset roots; one thread per xdist worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision.datasets.celeba
import torchvision.datasets.cifar
from fake_data import write_celeba, write_cifar10

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: two 2-thread workers would starve each other
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake files cannot match torchvision's md5 sums: check only that they exist."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.celeba):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture
def cifar_root(tmp_path: Path, no_md5: None) -> Path:
    write_cifar10(tmp_path)
    return tmp_path


@pytest.fixture
def celeba_root(tmp_path: Path, no_md5: None) -> Path:
    write_celeba(tmp_path)
    return tmp_path
