"""Truncated, random and hostile checkpoint files, given to every command that loads one: exit 2 with a message
that names the file and says it was not loaded, never torch's advice to load unsafely, and no code run."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runner import script, train

from pixelforge.callbacks.checkpointing import AtomicCheckpointIO
from pixelforge.checkpoints import CheckpointError
from pixelforge.cli import main


class Hostile:
    """Unpickled without weights_only, this would create ``marker``: the attack a loader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny run, and a copy of it whose checkpoints folder holds one bad file of each kind."""
    root = tmp_path_factory.mktemp("bad_checkpoints")
    run_dir = train(root / "logs", "experiment=classifier_cnn_digits")
    copy = root / "bad_run"
    shutil.copytree(run_dir, copy)
    good = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    marker = root / "PWNED"
    folder = copy / "checkpoints"
    (folder / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (folder / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "hostile_pickle.ckpt").write_bytes(pickle.dumps({"state_dict": Hostile(marker)}, protocol=2))
    torch.save({"state_dict": Hostile(marker)}, folder / "hostile_torch.ckpt")
    Image.new("RGB", (8, 8)).save(root / "init.png")
    return {"run": copy, "marker": marker, "init": root / "init.png", "root": root}


KINDS = ["truncated", "random", "hostile_pickle", "hostile_torch"]
COMMANDS = {
    "main -r": lambda ckpt, b: ("main.py", ["-t", "-r", str(ckpt)]),
    "main ckpt_path=": lambda ckpt, b: ("main.py", ["experiment=classifier_cnn_digits", f"ckpt_path={ckpt}",
                                                     "-l", str(b["root"] / "test_logs")]),
    "txt2img.py": lambda ckpt, b: ("txt2img.py", ["--ckpt", str(ckpt), "--prompt", "a red circle"]),
    "img2img.py": lambda ckpt, b: ("img2img.py", ["--ckpt", str(ckpt), "--init-img", str(b["init"])]),
    "sample.py": lambda ckpt, b: ("sample.py", ["--ckpt", str(ckpt)]),
    "evaluate.py": lambda ckpt, b: ("evaluate.py", ["--ckpt", str(ckpt)]),
    "latent_explore.py": lambda ckpt, b: ("latent_explore.py", ["--ckpt", str(ckpt)]),
}


def run_command(name: str, args: list[str], capsys) -> tuple[int, str]:
    if name == "main.py":
        code = main(args)
        return code, capsys.readouterr().err
    result = script(name, *args)
    return result.returncode, result.stderr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_checkpoint_is_named_and_not_loaded(bad: dict, command: str, kind: str, capsys) -> None:
    ckpt = bad["run"] / "checkpoints" / f"{kind}.ckpt"
    config = (bad["run"] / "configs" / "config.yaml").read_text()
    code, err = run_command(*COMMANDS[command](ckpt, bad), capsys)
    assert code == 2, err
    assert str(ckpt) in err and "It was not loaded" in err and "Traceback" not in err, err
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    if kind == "truncated":
        assert "is not a readable checkpoint (PytorchStreamReader failed reading zip archive" in err
    if kind.startswith("hostile"):
        assert "is not a safe pixelforge checkpoint: it asks to import posix.system" in err
    assert not bad["marker"].exists()  # no code of the file ran
    assert (bad["run"] / "configs" / "config.yaml").read_text() == config  # nothing of the run was rewritten
    assert not (bad["root"] / "test_logs").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_lightning_loading_path_explains_a_bad_file(bad: dict, kind: str) -> None:
    ckpt = bad["run"] / "checkpoints" / f"{kind}.ckpt"
    with pytest.raises(CheckpointError, match="It was not loaded") as info:
        AtomicCheckpointIO().load_checkpoint(ckpt, weights_only=True)
    assert str(ckpt) in str(info.value) and info.value.__cause__ is None and not bad["marker"].exists()
