"""Fully sharded data parallel training (FSDP2: torch's ``fully_shard``) through Lightning's ``ModelParallelStrategy``.

The config names the block classes to shard one by one (the auto-wrap policy: the U-Net's residual and transformer
blocks). Each block's parameters, gradients and optimizer state live split across the ranks and are gathered only
while the block runs. A model opts in with ``sharded_networks`` (what to shard) and a ``configure_model`` that calls
``FSDPStrategy.shard``. Unlike torch's first FSDP, ``fully_shard`` also runs on CPU processes (gloo), so it is
tested here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hydra.utils import get_class
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from pixelforge.validation import ConfigError


class FSDPStrategy(ModelParallelStrategy):
    """Data parallel over all ranks with every module of a ``wrap`` class (dotted class paths) sharded on its own,
    then each network handed to ``shard`` as a whole; ``param_dtype`` (e.g. ``bfloat16``) computes in that
    precision while the sharded weights and the gradient reduction stay float32."""

    def __init__(self, wrap: Sequence[str], param_dtype: str | None = None, **kwargs) -> None:
        super().__init__(tensor_parallel_size=1, **kwargs)
        self.wrap = tuple(get_class(path) for path in wrap)
        self.param_dtype = getattr(torch, param_dtype) if param_dtype else None

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # one data-parallel mesh of every rank
        super().setup_environment()

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The modules of ``model``'s ``sharded_networks()`` that ``wrap`` names; a ConfigError when the model has
        no such networks or none of those blocks."""
        networks = getattr(model, "sharded_networks", None)
        if networks is None:
            raise ConfigError(f"trainer=fsdp shards diffusion models (their U-Net); {type(model).__name__} is not one: "
                              "use trainer=ddp")
        blocks = [m for network in networks() for m in network.modules() if isinstance(m, self.wrap)]
        if not blocks:
            found = sorted({type(m).__name__ for network in networks() for m in network.modules()})
            raise ConfigError(f"trainer.strategy.wrap names {[c.__name__ for c in self.wrap]}, but the model has none "
                              f"of them; its networks hold {found}")
        return blocks

    def shard(self, model: nn.Module) -> None:
        """Shard ``model``'s ``wrap`` blocks, then its networks as wholes (once: a test after fitting finds them
        sharded)."""
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        networks = [network for network in model.sharded_networks() if not isinstance(network, FSDPModule)]
        if not networks:
            return
        options = {"mesh": self.device_mesh["data_parallel"],
                   "mp_policy": MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)}
        for block in self.blocks(model):
            fully_shard(block, **options)
        for network in networks:
            fully_shard(network, **options)


def reshard(networks: Sequence[nn.Module]) -> None:
    """Return the sharded ones of ``networks`` to their shards. A network that ran forward without a backward (the
    EMA copy drawing the image logs) keeps its outermost weights gathered until its next forward; ``fully_shard``
    frees them only after a backward."""
    from torch.distributed.fsdp import FSDPModule

    for network in networks:
        if isinstance(network, FSDPModule):
            network.reshard()
