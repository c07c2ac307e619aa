"""Check a composed config against the signatures of the classes it names, before a run directory exists.

Hydra would find a wrong type or an unknown argument only when it instantiates the object, which for a trainer or
model is after the run directory was made, as a traceback. Here every node with a ``_target_`` is compared with the
type hints of its target: a value of the wrong simple type (``trainer.max_epochs=abc``), a value outside a
``Literal`` (``trainer.precision=17``) or an argument the target does not take fails with one line naming the key.
Hints this cannot judge (callables, containers, tensors) are left to the target.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any, Literal, Union

from hydra.errors import InstantiationException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from pixelforge.runs import TRAINING_KEYS, walk

EXTRA_KEYS = {"model": TRAINING_KEYS}  # read and removed by training before the model is instantiated


class ConfigError(ValueError):
    """A composed config that cannot run; the message names the key, the bad value and what is valid."""

    @classmethod
    def from_instantiation(cls, error: InstantiationException) -> ConfigError:
        """Hydra's multi-line 'Error in call to target ...' as one line: the config key, then the target's error."""
        key = re.search(r"full_key: (\S+)", str(error))
        return cls(f"{key.group(1) + ': ' if key else ''}{error.__cause__ or error}")


def accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits ``hint``: True, False, or None where the hint is not a simple one to judge."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        verdicts = [accepts(arg, value) for arg in args]
        if True in verdicts:
            return True
        if isinstance(value, str) and {int, float} & set(args):  # "abc" for ``float | Tensor``: a number was meant
            return False
        return False if all(v is False for v in verdicts) else None
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return None


def describe(hint: Any) -> str:
    """``int or None``, ``one of '16-mixed', 'bf16-mixed', ...``: the hint as a user reads it."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def signature_of(target: str) -> tuple[dict[str, inspect.Parameter], dict[str, Any]] | None:
    """The parameters and resolvable type hints of ``target``'s constructor (or function), None if it has none."""
    obj = get_object(target)
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        parameters = dict(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # forward references only a type checker resolves: judge the names, not the types
        hints = {}
    return parameters, hints


def check_node(node: DictConfig, path: str) -> None:
    """Check the arguments of one ``_target_`` node (see the module docstring)."""
    target = node._target_
    try:
        found = signature_of(target)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{path}._target_={target!r} cannot be imported: {error}") from None
    if found is None:
        return
    parameters, hints = found
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    name = target.rpartition(".")[2]
    for key in node:
        if str(key).startswith("_") or key in EXTRA_KEYS.get(path, ()):
            continue
        if key not in parameters:
            if takes_any:
                continue
            valid = ", ".join(k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise ConfigError(f"{path}.{key}: {name} takes no argument {key!r}; its arguments are {valid}")
        if OmegaConf.is_missing(node, key) or key not in hints:
            continue
        value = node[key]
        if value is None or (isinstance(value, DictConfig) and "_target_" in value):
            continue  # None may be filled in later (an optimizer's lr); nested targets are checked on their own
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if accepts(hints[key], value) is False:
            raise ConfigError(f"{path}.{key}={value!r}: {name} expects {describe(hints[key])}")


def check_config(cfg: DictConfig) -> None:
    """Check every ``_target_`` node of ``cfg``; raises ConfigError on the first bad argument."""
    base_lr = OmegaConf.select(cfg, "model.base_learning_rate")
    if base_lr is not None and accepts(float, base_lr) is False:
        raise ConfigError(f"model.base_learning_rate={base_lr!r}: expected a number (the per-sample learning rate)")
    for path, _, _, value in walk(cfg):
        if isinstance(value, DictConfig) and "_target_" in value:
            check_node(value, path)
