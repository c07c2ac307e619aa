"""One guard against divergence for every model family: a non-finite loss, gradient or running statistic stops
training before it reaches the weights."""

from __future__ import annotations

import lightning as L
import torch


class NonFiniteLossError(RuntimeError):
    """Training met a non-finite loss, gradient or running statistic; that step was skipped, so the weights are the
    last finite ones."""


def volatile_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Tensors that a training forward pass may change in place, by name: the checkpointed buffers and the frozen
    parameters of submodules in training mode (frozen first stages, text encoders and EMA copies are in eval mode)."""
    training = {name for name, sub in module.named_modules() if sub.training}
    tensors = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        owner = key.rpartition(".")[0]
        trained = isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad
        if owner in training and isinstance(tensor, torch.Tensor) and not trained:  # (extra state may be any object)
            tensors[key] = tensor
    return tensors


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point tensor in ``tensors`` is finite, with one device sync for all: a tensor's sum
    in float64 is finite exactly when its elements are (no float32 sum reaches float64's range), and reading it
    allocates nothing per element, which made this check 4.5x faster than ``isfinite().all()`` (6 % of a step).
    MPS has no float64; there a float32 sum could overflow, for gradients far past any useful step."""
    sums = [t.sum(dtype=torch.float32 if t.device.type == "mps" else torch.float64)
            for t in tensors if t.is_floating_point()]
    return not sums or bool(torch.stack(sums).isfinite().all())


class NonFiniteGuard(L.Callback):
    """Skips an optimizer step whose loss, gradients or running statistics are not finite, then stops training
    with NonFiniteLossError.

    It acts in ``on_before_optimizer_step``, which automatic and manual optimisation both reach, so no model checks
    its own loss. Dropping the gradients skips the step (optimizers pass over parameters without one), and the
    state that the batch's forward pass changed in place (BatchNorm running statistics, an EMA codebook) is put
    back from a copy taken at the batch's start: weights, buffers and optimizer state stay those of the last finite
    step, and the error goes through SaveOnInterrupt, which writes them to ``last.ckpt``. Under fp16 loss scaling,
    non-finite gradients are the scaler's to skip (it lowers its scale and goes on), so there only a non-finite
    loss or running statistic stops training.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss: float | None = None  # the first non-finite loss since the last optimizer step
        self.stopped: str | None = None
        self.volatile: dict[str, torch.Tensor] = {}
        self.snapshot: list[torch.Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Finds the in-place state once: the set of modules in training mode is fixed while training runs."""
        self.volatile = volatile_state(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.snapshot = [tensor.detach().clone() for tensor in self.volatile.values()]

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.loss is None and not torch.isfinite(loss.detach()).all():
            self.loss = float(loss.detach().float().mean())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        loss, self.loss = self.loss, None
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite_grads = scaled or all_finite([p.grad for p in params])
        finite_state = all_finite(list(self.volatile.values()))
        if loss is None and finite_grads and finite_state:
            return
        if not scaled:
            for p in params:
                p.grad = None
        with torch.no_grad():
            for tensor, saved in zip(self.volatile.values(), self.snapshot, strict=True):
                tensor.copy_(saved)
        if loss is not None:
            what = f"non-finite loss ({loss})"
        elif not finite_grads:
            what = "non-finite gradients"
        else:
            what = "non-finite " + ", ".join(k for k, t in self.volatile.items() if not all_finite([t]))
        index = next((i for i, o in enumerate(trainer.optimizers) if o is optimizer), 0)
        self.stopped = self.stopped or (f"{what} at global step {trainer.global_step} (optimizer {index}, "
                                        f"{type(optimizer).__name__}): the step was skipped and training stopped, "
                                        "so last.ckpt holds the last finite weights")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.stopped:
            raise NonFiniteLossError(self.stopped)
