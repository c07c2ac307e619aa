"""ImageClassifier: losses fall, one head per target, top-5 only where it means something, annotated images."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch

from pixelforge.models.classifier import ImageClassifier
from pixelforge.modules.cnn import SmallCNN
from pixelforge.optim import warmup_cosine


def classifier(targets: dict[str, int], in_channels: int = 1) -> ImageClassifier:
    backbone = SmallCNN(in_channels, 16, channels=(8, 16), hidden_dim=32, dropout=0.0)
    return ImageClassifier(backbone, targets, optimizer=partial(torch.optim.Adam, lr=3e-3))


def test_loss_falls_and_tiny_batch_is_memorised() -> None:
    torch.manual_seed(0)
    model = classifier({"label": 10})
    batch = {"image": torch.rand(20, 1, 16, 16) * 2 - 1, "label": torch.arange(20) % 10}
    optimizer = model.optimizer(model.parameters())
    losses = []
    for _ in range(150):
        logits = model(batch["image"])["label"]
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    assert (model(batch["image"])["label"].argmax(1) == batch["label"]).all()


def test_multi_target_heads_metrics_and_log_images() -> None:
    targets = {"shape": 3, "color": 7}
    model = classifier(targets, in_channels=3)
    assert set(model.heads) == set(targets)
    assert "val_color_top5" in model.metrics and "val_shape_top5" not in model.metrics
    batch = {"image": torch.rand(5, 3, 16, 16) * 2 - 1, "shape": torch.tensor([0, 1, 2, 0, 1]),
             "color": torch.tensor([6, 5, 4, 3, 2])}
    logits = model(batch["image"])
    assert logits["shape"].shape == (5, 3) and logits["color"].shape == (5, 7)
    images = model.log_images(batch)["predictions"]
    assert images.shape[:2] == (5, 3) and images.shape[-1] >= 64 and images.min() >= -1 and images.max() <= 1
    assert model.features(batch["image"]).shape == (5, 32)


def test_warmup_cosine_schedule_shape() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.1 and lrs[9] == 1.0 and abs(lrs[60] - 0.55) < 0.02 and abs(lrs[-1] - 0.1) < 1e-3
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_fit_reaches_accuracy_on_digits(tmp_path) -> None:
    from pixelforge.data import ImageDataModule
    from pixelforge.data.embedded import Digits

    L.seed_everything(0)
    model = classifier({"label": 10})
    dm = ImageDataModule(partial(Digits, image_size=16), batch_size=64, channels=1)
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert result["test/acc"] > 0.8
