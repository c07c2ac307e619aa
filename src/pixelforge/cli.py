"""argv -> composed DictConfig: CompVis flags (-t, -b, -r, -n, ...) become Hydra overrides, the rest stays Hydra's.

Modules that import torch or Lightning are imported inside the functions that need them, so that ``--help`` and
``--print-config`` answer in well under a second (a torch import alone takes seconds on a small CPU).
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pixelforge import CONFIG_DIR

CONFIG_GROUPS = frozenset(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())  # data, model, trainer ...


MISSING_KEY = object()


class CLIError(Exception):
    """A bad command line: the message names the bad value and what would be valid."""


def experiments() -> list[str]:
    """Names of the runnable recipes in ``configs/experiment/``."""
    return group_options("experiment")


def str2bool(value: str) -> bool:
    """CompVis-style boolean flag values: yes/true/t/y/1 and no/false/f/n/0."""
    lowered = str(value).lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The CompVis flags with their names, defaults and meaning; unknown words are Hydra overrides."""
    epilog = (
        "Everything else is a Hydra override: experiment=NAME, model.optimizer.lr=3e-4, trainer.max_epochs=3, "
        "data.batch_size=64, +trainer.profiler=simple, optimizer=sgd.\n\nexperiments:\n  "
        + "\n  ".join(experiments())
    )
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train and test pixelforge models (CompVis-style flags + Hydra overrides).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-t", "--train", action="store_true", help="train (without it a run only tests)")
    parser.add_argument("--no-test", action="store_true", help="do not test after training")
    parser.add_argument("-b", "--base", nargs="*", metavar="base_config.yaml", default=[],
                        help="YAML files merged left to right over the composed config")
    parser.add_argument("-r", "--resume", metavar="LOGDIR_OR_CKPT",
                        help="resume a run directory (or a checkpoint inside one) in place")
    parser.add_argument("-n", "--name", help="run name (default: the experiment's name)")
    parser.add_argument("-f", "--postfix", help="appended to the run directory's name")
    parser.add_argument("-l", "--logdir", help="directory for run directories (default: logs)")
    parser.add_argument("-s", "--seed", type=int, help="global seed (default: 23)")
    parser.add_argument("-d", "--debug", nargs="?", const=True, type=str2bool,
                        help="post-mortem debugger on error; runs go under <logdir>/debug_runs/")
    parser.add_argument("--scale_lr", nargs="?", const=True, type=str2bool,
                        help="lr = accumulate * devices * nodes * batch_size * base lr (default: true)")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="sweep overrides like key=a,b or key=range(1,4): one run per combination, in turn, "
                             "under <logdir>/multirun/<now>/")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split argv into CompVis flags and Hydra overrides; flags that look like options but are unknown fail."""
    parser = build_parser()
    args, rest = parser.parse_known_args(list(argv))
    # "-b a.yaml key=value": nargs="*" swallows the override; words with "=" are overrides, not files.
    rest = [word for word in args.base if "=" in word] + rest
    args.base = [word for word in args.base if "=" not in word]
    unknown = [word for word in rest if word.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (Hydra overrides look like key=value)")
    bad = [word for word in rest if "=" not in word and not word.startswith("~")]
    if bad:
        parser.error(f"{' '.join(bad)}: overrides must look like key=value (e.g. trainer.max_epochs=3)")
    if args.resume and args.name:
        parser.error("-n/--name cannot be combined with -r/--resume: a resumed run keeps its directory and name")
    return args, rest


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The run-key overrides the CompVis flags stand for (``-t`` -> ``train=true`` ...)."""
    overrides = []
    if args.train:
        overrides.append("train=true")
    if args.no_test:
        overrides.append("test=false")
    for key in ("name", "postfix", "logdir", "seed", "debug", "scale_lr"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return overrides


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], allow_groups: bool) -> None:
    """Apply ``key=value``/``+key=value``/``~key`` to a composed or saved config; unknown keys fail.

    Group choices (``data=shapes``) were applied by composition; when ``allow_groups`` is False they are
    an error (a resumed run cannot swap its dataset or model).
    """
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.split("@")[0] in CONFIG_GROUPS and not isinstance(override.value(), dict):
            if allow_groups:
                continue
            raise CLIError(f"cannot change config group {key!r} of a resumed run; override single keys instead "
                           f"(e.g. {key}.some_key=value)")
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is None or leaf not in node:
                raise CLIError(f"cannot delete {key!r}: no such key in the config")
            with open_dict(node):
                del node[leaf]
            continue
        adding = override.is_add() or override.is_force_add()
        if not adding and OmegaConf.select(cfg, key, default=MISSING_KEY) is MISSING_KEY:
            raise CLIError(f"unknown config key {key!r}; use +{key}=... to add a new key, or "
                           "--print-config to see the valid ones")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, override.value(), merge=True, force_add=True)


def find_resume(path: str) -> tuple[Path, Path]:
    """``-r`` target -> (run directory, checkpoint); accepts a run directory or a ``.ckpt`` inside one."""
    from pixelforge.runs import find_checkpoint

    if not Path(path).exists():
        raise CLIError(f"cannot resume {path!r}: no such run directory or checkpoint")
    try:
        ckpt, config = find_checkpoint(path)
    except FileNotFoundError as error:
        raise CLIError(f"cannot resume {path!r}: {error}") from None
    if not config.is_file():
        raise CLIError(f"cannot resume {path!r}: {config} is missing; -r expects a run directory made by main.py")
    return config.parent.parent.resolve(), ckpt.resolve()


def load_base(path: str) -> DictConfig:
    """A ``-b`` file as a config mapping; a missing file, bad YAML or a non-mapping is a CLIError naming it."""
    if not Path(path).is_file():
        raise CLIError(f"-b/--base: no such file {path!r}")
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise CLIError(f"-b/--base: {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(cfg, DictConfig):
        raise CLIError(f"-b/--base: {path} must hold a mapping of config keys (e.g. 'trainer: {{max_epochs: 3}}'), "
                       f"not a {type(cfg).__name__}")
    return cfg


def group_options(group: str) -> list[str]:
    """The presets of config group ``group`` (``model`` -> ``classifier/cnn``, ...), as ``group=`` accepts them."""
    root = CONFIG_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def check_group_choices(overrides: Sequence[str]) -> None:
    """Every ``group=option`` names a preset inside ``configs/<group>/``; a path out of it is refused."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group, value = override.key_or_group, override.value()
        if not (CONFIG_DIR / group).is_dir() or override.is_delete() or override.is_sweep_override():
            continue
        if value is None or isinstance(value, dict):
            continue
        options = group_options(group)
        for choice in value if isinstance(value, list) else [value]:  # logger=[default,csv] picks several
            if str(choice) not in options:
                own = " (a YAML file of your own goes through -b FILE)" if group == "experiment" else ""
                raise CLIError(f"unknown config {group}/{choice}: valid {group} options are {', '.join(options)}{own}")


def compose_config(args: argparse.Namespace, overrides: Sequence[str]) -> DictConfig:
    """The run's config: a saved one for ``-r``, otherwise defaults + experiment + ``-b`` files + overrides."""
    overrides = [*flag_overrides(args), *overrides]
    if args.resume:
        from pixelforge.runs import relocate, upgrade  # imports torch: only once a run starts

        run_dir, ckpt = find_resume(args.resume)
        cfg = upgrade(OmegaConf.load(run_dir / "configs" / "config.yaml"))
        if cfg.get("run_dir") and Path(cfg.run_dir) != run_dir:
            print(f"main.py: {run_dir} was made as {cfg.run_dir}; its paths now point into {run_dir}", file=sys.stderr)
            relocate(cfg, cfg.run_dir, str(run_dir))
        cfg.train, cfg.test = False, True  # per invocation, as in CompVis: -t trains on, no -t only tests
        OmegaConf.set_struct(cfg, True)
        apply_overrides(cfg, overrides, allow_groups=False)
        with open_dict(cfg):
            cfg.resume, cfg.run_dir, cfg.ckpt_path = str(run_dir), str(run_dir), str(ckpt)
        return cfg
    check_group_choices(overrides)
    if GlobalHydra.instance().is_initialized():  # a job of a -m sweep: Hydra is set up on the configs already
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    else:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.experiment_name = choices.get("experiment")
        if cfg.name is None:
            cfg.name = cfg.experiment_name or "run"
    if args.base:
        with open_dict(cfg):
            cfg.merge_with(*[load_base(base) for base in args.base])
        apply_overrides(cfg, overrides, allow_groups=True)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``main.py``: parse, compose, then train and/or test through :func:`pixelforge.train.run`."""
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    return multirun(args, overrides) if args.multirun else run_one(args, overrides)


def multirun(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """``-m``: the sweep goes through Hydra's own sweeper and launcher (the basic ones: every combination of
    ``key=a,b`` in turn; ``hydra/sweeper=optuna``, ``hydra/launcher=submitit_slurm`` ... as plugins), and each job
    is ``run_one`` on its overrides: the CompVis flags, ``-b`` files, the plan and a run directory under
    ``<logdir>/multirun/<now>/<job number>/``. A job returns its run's best monitored value (what a sweeper such as
    Optuna minimises) and writes it to ``result.yaml`` beside its run."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path

    parent = Path(args.logdir or "logs") / "multirun" / f"{datetime.now():%Y-%m-%dT%H-%M-%S}"
    try:
        check_group_choices(overrides)
    except CLIError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    version.setbase("1.3")
    hydra = Hydra.create_main_hydra2("pixelforge", create_config_search_path(str(CONFIG_DIR)))
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none", "hydra.output_subdir=null"]
    try:
        hydra.multirun("config", functools.partial(sweep_job, args),
                       [f"hydra.sweep.dir={parent}", "hydra.sweep.subdir=${hydra.job.num}", *quiet, *overrides],
                       with_log_configuration=False)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    finally:
        GlobalHydra.instance().clear()
    results = [OmegaConf.load(path) for path in sorted(parent.glob("*/result.yaml"), key=lambda p: int(p.parent.name))]
    print(f"multirun: {len(results)} job(s) under {parent}", file=sys.stderr)
    for result in results:
        print(f"  [{result.job}] exit {result.exit_code}  {result.monitor}={result.best}  "
              f"{' '.join(result.overrides)}", file=sys.stderr)
    return next((r.exit_code for r in results if r.exit_code), 0)


def sweep_job(args: argparse.Namespace, _: DictConfig) -> float:
    """One job of a Hydra sweep: ``run_one`` on the job's overrides, in the job's own folder; returns the best
    value of the run's monitored metric (NaN when the run failed or monitors nothing)."""
    from hydra.core.hydra_config import HydraConfig

    from pixelforge.runs import best_score

    hydra = HydraConfig.get()
    job_dir = Path(hydra.runtime.output_dir)
    overrides = list(hydra.overrides.task)
    print(f"[multirun job {hydra.job.num}] {' '.join(overrides)}", file=sys.stderr)
    code = run_one(argparse.Namespace(**{**vars(args), "logdir": str(job_dir), "multirun": False}), overrides)
    runs = sorted(p for p in job_dir.iterdir() if (p / "configs").is_dir())
    monitor, best = best_score(runs[-1]) if runs and not code else (None, float("nan"))
    OmegaConf.save({"job": hydra.job.num, "overrides": overrides, "exit_code": code, "monitor": monitor,
                    "best": best, "run_dir": str(runs[-1]) if runs else None}, job_dir / "result.yaml")
    return best


def lr_hint(cfg: DictConfig) -> str:
    """Overrides that lower the run's learning rates tenfold, in the keys that set them (``train.learning_rate``)."""
    model = cfg.model
    if OmegaConf.select(model, "optimizer.lr") is not None:
        keys = ["optimizer.lr"]
    elif model.get("base_learning_rate") is not None:
        keys = ["base_learning_rate"]
    else:
        keys = [key for key in ("d_lr", "g_lr") if model.get(key) is not None]
    return " ".join(f"model.{key}={OmegaConf.select(model, key) / 10:.3g}" for key in keys)


def run_one(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    """Compose one config, plan it (a first stage or CLIP it needs trained first) and run the plan.

    One error policy for every step: a config that cannot run is a message and exit code 2 before anything is
    written; SIGTERM, Ctrl-C and a non-finite loss are a message with the command that continues (exit 143, 130,
    1); any other error in training is a traceback (``last.ckpt`` saved) and a non-zero exit.
    """
    try:
        cfg = compose_config(args, overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        from pixelforge.stages import plan
        from pixelforge.train import check_runnable, resolve_precision
        from pixelforge.validation import check_config

        check_runnable(cfg)  # "nothing to do" before the plan looks for a first stage
        steps = plan(cfg, lambda stage: compose_config(parse([])[0], stage))
        # every step's config is resolved and checked before the first one runs (a planned first stage trains from
        # scratch: it has no checkpoint for check_runnable to read)
        for step in steps:
            resolve_precision(step)
            check_config(step)
    except (CLIError, HydraException, OmegaConfBaseException, ValueError) as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    return run_plan(steps)


def run_plan(steps: Sequence[DictConfig]) -> int:
    """Run a plan's configs in order, the last one on the runs the others trained (a first stage, a CLIP); the
    first non-zero exit code ends it (see ``run_one``)."""
    from pixelforge.stages import connect

    *stages, last = steps
    for step in steps:
        if step is last:
            for stage in stages:
                connect(last, stage)
        code = run_step(step)
        if code:
            return code
    return 0


def run_step(cfg: DictConfig) -> int:
    """Run one config of a plan; returns the exit code (see ``run_one``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from pixelforge.callbacks.nonfinite import NonFiniteLossError
    from pixelforge.train import run
    from pixelforge.validation import ConfigError

    try:
        run(cfg)
    except ConfigError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"main.py: error: {error}. Continue from there with a lower learning rate: "
              f"python main.py -t -r {cfg.run_dir} {lr_hint(cfg)}", file=sys.stderr)
        return 1
    except SIGTERMException:  # Lightning stops the loop with exit code 0; a scheduler must see the signal
        print(f"main.py: stopped by SIGTERM; continue with: python main.py -t -r {cfg.run_dir}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except SystemExit as exit_:
        if not isinstance(exit_.__context__, KeyboardInterrupt):
            raise
        # Lightning's Ctrl-C path (last.ckpt saved by SaveOnInterrupt) ends in sys.exit(1), with SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"main.py: stopped by Ctrl-C; continue with: python main.py -t -r {cfg.run_dir}", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0
