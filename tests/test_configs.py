"""Every option of every config group composes (a YAML error in any preset fails here, not in a user's run), and
every override an error message suggests is one that composes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pixelforge.cli import CONFIG_DIR, compose_config, group_options, parse
from pixelforge.data.folders import BadImageError, ImageFolderDataset, ImageTextFolderDataset
from pixelforge.data.torchvision_sets import TorchvisionDataset

GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "experiment")


def options(group: str) -> list[str]:
    """``group=option`` overrides for every preset under ``configs/<group>/`` (nested: ``model=classifier/cnn``)."""
    # a sub-group chosen inside a model preset: the text encoder of the caption embedder
    return [f"model/text_encoder@model.conditioner.caption.encoder={Path(option).name}"
            if group == "model" and option.startswith("text_encoder/") else f"{group}={option}"
            for option in group_options(group)]


OVERRIDES = [override for group in GROUPS for override in options(group)]


def test_every_group_is_covered() -> None:
    assert {o.split("=")[0].split("/")[0].split("@")[0] for o in OVERRIDES} == set(GROUPS)
    assert "data=image_folder" in OVERRIDES and "model=classifier/cnn" in OVERRIDES


@pytest.mark.parametrize("override", OVERRIDES)
def test_config_group_option_composes(override: str) -> None:
    base = ["experiment=ldm_shapes_txt2img"] if override.startswith("model/text_encoder") else []
    cfg = compose_config(*parse([*base, override]))
    group, _, option = override.partition("=")
    assert OmegaConf.to_yaml(cfg)  # the whole tree serialises (unresolved: ??? values are the user's to fill)
    if group == "data":
        assert cfg.data.dataset._target_


def test_image_folder_composes_with_the_readme_command() -> None:
    cfg = compose_config(*parse(["experiment=classifier_cnn_mnist5k", "data=image_folder",
                                 "data.dataset.root=/tmp/pets", "data.targets.label=2", "data.image_size=64",
                                 "data.channels=3"]))
    assert cfg.data.targets.label == 2 and cfg.model.targets == {"label": 2}
    assert cfg.data.dataset.root == "/tmp/pets"


HINT = re.compile(r"(?<![\w.+])((?:data|model|trainer|callbacks)\.[\w.]+=[\w./-]+)")


def hinted_overrides(message: str) -> list[str]:
    """The ``key=value`` overrides an error message tells the user to pass."""
    found = HINT.findall(message)
    assert found, f"no override hint in: {message}"
    return found


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "celeba"])
def test_missing_dataset_hint_is_an_override_that_composes(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        TorchvisionDataset(name, tmp_path / "nowhere")
    hints = hinted_overrides(str(info.value))
    assert hints == ["data.dataset.download=true"]
    cfg = compose_config(*parse([f"data={name}", *hints]))
    assert cfg.data.dataset.download is True


def test_folder_hints_are_overrides_that_compose(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "1.png").write_bytes(b"not a png")
    dataset = ImageFolderDataset(tmp_path, fractions=(1.0, 0.0, 0.0))
    messages = {}
    with pytest.raises(BadImageError) as info:
        dataset[0]
    messages["image_folder"] = str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        ImageTextFolderDataset(tmp_path)
    messages["image_text_folder"] = str(info.value)
    with pytest.raises(ValueError) as info:
        ImageFolderDataset(tmp_path, channels=4)
    messages["image_folder "] = str(info.value)
    for data, message in messages.items():
        for hint in hinted_overrides(message):
            compose_config(*parse([f"data={data.strip()}", hint]))
