"""NT-Xent and CLIP's InfoNCE against hand computations, their symmetry, and the global-batch gather: two gloo
processes give the loss and gradients of one process on the concatenated batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from pixelforge.contrastive.losses import clip_loss, nt_xent


def hand_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """The loss as the SimCLR paper writes it, one anchor at a time."""
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n, total = len(z1), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / others)
    return total / (2 * n)


def hand_clip(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    logits = (scale * image @ text.T).tolist()
    n = len(logits)
    rows = sum(-logits[i][i] + math.log(sum(math.exp(v) for v in logits[i])) for i in range(n)) / n
    cols = sum(-logits[i][i] + math.log(sum(math.exp(logits[k][i]) for k in range(n))) for i in range(n)) / n
    return (rows + cols) / 2


def test_nt_xent_is_the_papers_loss_and_symmetric() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    loss, accuracy = nt_xent(z1, z2, temperature=0.3)
    assert loss.item() == pytest.approx(hand_nt_xent(z1, z2, 0.3), rel=1e-5)
    assert nt_xent(z2, z1, 0.3)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    aligned, accuracy = nt_xent(z1, z1 * 3, temperature=0.1)  # views agree: every pair finds itself
    assert accuracy == 1 and aligned < loss
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        nt_xent(z1, z2, temperature=0)


def test_clip_loss_is_the_symmetric_infonce() -> None:
    torch.manual_seed(0)
    image, text = torch.randn(6, 4), torch.randn(6, 4)
    scale = torch.tensor(math.log(1 / 0.07))
    loss, _ = clip_loss(image, text, scale)
    assert loss.item() == pytest.approx(hand_clip(image, text, 1 / 0.07), rel=1e-5)
    assert clip_loss(text, image, scale)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert clip_loss(image, image, scale)[1] == 1


def gather_worker(rank: int, world: int, init: str, out: str) -> None:
    """One DDP rank: its half of the batch through a shared linear encoder, the losses over the gathered batch,
    gradients averaged over ranks as DDP does. The process leaves by ``os._exit``: torch 2.14 now and then aborts
    in its C++ teardown after a gloo group ("terminate called without an active exception", 1 run in 20 on two
    busy cores), long after the result is written."""
    import os

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)
    x1, x2, text = torch.randn(8, 6), torch.randn(8, 6), torch.randn(8, 4)
    part = slice(rank * 4, rank * 4 + 4)
    loss = nt_xent(encoder(x1[part]), encoder(x2[part]), 0.5)[0] + clip_loss(
        encoder(x1[part]), text[part], torch.tensor(2.0))[0]
    loss.backward()
    for p in encoder.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in encoder.parameters()]}, f"{out}/{rank}.pt")
    dist.destroy_process_group()
    os._exit(0)


def test_two_gloo_ranks_compute_the_loss_and_gradients_of_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(gather_worker, args=(2, f"file://{tmp_path / 'init'}", str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 4)
    x1, x2, text = torch.randn(8, 6), torch.randn(8, 6), torch.randn(8, 4)
    loss = nt_xent(encoder(x1), encoder(x2), 0.5)[0] + clip_loss(encoder(x1), text, torch.tensor(2.0))[0]
    loss.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(result["loss"], loss.detach())
        for theirs, ours in zip(result["grads"], encoder.parameters(), strict=True):
            torch.testing.assert_close(theirs, ours.grad)
