"""Reading checkpoint files safely: weights-only loading, with errors that name the file and never advise unsafe
loading (torch's own message suggests ``weights_only=False``, which would run whatever code a hostile file holds)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

NOT_MMAP = "mmap can only be used"  # torch's error for legacy (non-zip) files under mmap=True


class CheckpointError(ValueError):
    """A file that is not a readable, safe checkpoint; the message names it and says that it was not loaded."""


def explain(path: str | Path, error: BaseException) -> CheckpointError:
    """The error of loading ``path`` in words a user can act on, without torch's advice to load unsafely."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        imported = re.search(r"GLOBAL ([\w.]+)", text)
        wants = (f"it asks to import {imported.group(1)}, which a checkpoint of tensors and plain data never needs"
                 if imported else "its pickle uses instructions that weights-only loading refuses")
        return CheckpointError(f"{path} is not a safe pixelforge checkpoint: {wants}. It was not loaded, and "
                               "nothing in it ran; use only checkpoints from sources you trust")
    if isinstance(error, EOFError):
        reason = "the file is empty or cut short"
    elif "PytorchStreamReader" in text:
        reason = text.split(". ")[0]
    else:
        reason = f"{type(error).__name__}: {text.splitlines()[0][:200] if text else 'unreadable'}"
    return CheckpointError(f"{path} is not a readable checkpoint ({reason}); it may be truncated or corrupted, or "
                           "not a file that torch.save wrote. It was not loaded")


def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``; an unreadable or unsafe file raises CheckpointError naming it.

    ``mmap=True`` maps the tensors instead of reading them (cheap for a check of a large file); legacy files that
    cannot be mapped are read whole.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if mmap and NOT_MMAP in str(error):
            return load_checkpoint(path, map_location, mmap=False)
        raise explain(path, error) from None
    except Exception as error:  # a corrupt file raises anything from EOFError to KeyError
        raise explain(path, error) from None


def check_checkpoint(path: str | Path) -> None:
    """Fail early, before a run writes anything, when ``path`` is not a loadable Lightning checkpoint."""
    checkpoint = load_checkpoint(path, mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} holds no 'state_dict': it is not a checkpoint of a pixelforge run")
