"""Build a model without memory for its weights, to fill it from a file: parameters on the meta device, buffers
real.

``torch.device("meta")`` would put the buffers there too, and a model's buffers (a noise schedule's tables, a
first stage's counters) are computed in its constructor, not read from the file. So parameters alone go to meta,
as accelerate's ``init_empty_weights(include_buffers=False)`` does; accelerate is not a dependency, and this is a
few lines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device: no memory and no random initialisation (an
    initialiser on a meta tensor does nothing). Fill them with ``load_state_dict(..., assign=True)``."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def meta_parameters(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters still on the meta device (none once a file filled them all)."""
    return [name for name, param in module.named_parameters() if param.is_meta]
