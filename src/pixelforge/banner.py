"""What a run prints at start: the resolved config as a tree, run directory, device, precision, parameters."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

ORDER = ("experiment", "name", "data", "model", "trainer", "callbacks", "logger")


def config_tree(cfg: DictConfig) -> Tree:
    """One branch per top-level key, YAML inside; groups first, run keys last."""
    tree = Tree("config", style="bold", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    scalars = {}
    for key in keys:
        value = cfg[key]
        if isinstance(value, DictConfig):
            text = OmegaConf.to_yaml(value, resolve=True)
            tree.add(f"[bold]{key}[/]").add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
        else:
            scalars[key] = value
    run_keys = OmegaConf.to_yaml(OmegaConf.create(scalars))
    tree.add("[bold]run[/]").add(Syntax(run_keys, "yaml", theme="ansi_dark", background_color="default"))
    return tree


def count_parameters(model: L.LightningModule) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def print_banner(cfg: DictConfig, run_dir: Path, trainer: L.Trainer, model: L.LightningModule) -> None:
    """Print the config tree and the facts a user checks first."""
    console = Console()
    console.print(config_tree(cfg))
    total, trainable = count_parameters(model)
    device = trainer.strategy.root_device
    console.print(f"[bold]run directory[/] {run_dir}")
    console.print(f"[bold]device[/] {device} ({trainer.num_devices} device(s) x {trainer.num_nodes} node(s), "
                  f"strategy {type(trainer.strategy).__name__})  [bold]precision[/] {trainer.precision}")
    console.print(f"[bold]parameters[/] {type(model).__name__}: {total:,} ({trainable:,} trainable)")
