"""SimCLR on the shared training path: the views' loss falls, the kNN monitor is logged, and linear_probe.py
scores the run's frozen features with few labels beside the from-scratch baseline."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from pixelforge.cli import compose_config, parse
from pixelforge.models.simclr import SimCLR
from pixelforge.modules.augment import ViewAugment
from pixelforge.modules.cnn import SmallCNN
from pixelforge.train import run

SCRIPTS = Path(__file__).parents[2] / "scripts"
QUICK = ["trainer.max_steps=3", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
         "callbacks.progress_bar=null", "callbacks.image_logger=null", "data.batch_size=32", "model.knn.bank_size=200",
         "model.backbone.channels=[8,16]", "model.backbone.hidden_dim=32", "trainer.limit_test_batches=1"]


def tiny_simclr(**kwargs) -> SimCLR:
    return SimCLR(SmallCNN(1, 16, [8, 16], 1, 32, 0.0, True), optimizer=torch.optim.AdamW,
                  projection={"hidden_dim": 32, "out_dim": 16}, **kwargs)


def test_the_views_loss_falls_on_a_batch() -> None:
    torch.manual_seed(0)
    model = tiny_simclr(temperature=0.2, augment=ViewAugment(crop_scale=(0.6, 1.0)))
    x = torch.nn.functional.interpolate(torch.rand(32, 1, 4, 4), size=16, mode="bilinear") * 2 - 1  # 32 patterns
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start = model.loss(x, torch.Generator().manual_seed(0))[0].item()
    for _ in range(60):
        loss = model.loss(x)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.loss(x, torch.Generator().manual_seed(0))[0].item() < 0.75 * start
    assert model.embed(x).shape == (32, 32)
    with pytest.raises(ValueError, match=r"unknown knn option\(s\) \['kk'\]"):
        tiny_simclr(knn={"kk": 3})


def test_a_run_logs_its_knn_accuracy_and_linear_probe_scores_it(tmp_path: Path) -> None:
    metrics = run(compose_config(*parse(["-t", "-l", str(tmp_path / "logs"), "experiment=simclr_mnist5k", *QUICK])))
    assert 0.1 < metrics["test/knn_acc"] <= 1 and metrics["test/loss"] > 0
    (run_dir,) = (tmp_path / "logs").iterdir()
    out = tmp_path / "probe.json"
    main = runpy.run_path(str(SCRIPTS / "linear_probe.py"))["main"]
    assert main(["--ckpt", str(run_dir), "--labels_per_class", "10", "--baseline", "--baseline_steps", "3",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["target"], r["labels"]) for r in rows] == [("label", "all"), ("label", "10/class")]
    assert all(0.1 < r["probe_acc"] <= 1 for r in rows) and 0 <= rows[1]["scratch_acc"] <= 1
    assert out.with_suffix(".png").stat().st_size > 1000
    with pytest.raises(SystemExit) as error:
        main(["--ckpt", str(tmp_path / "missing")])
    assert error.value.code == 2
