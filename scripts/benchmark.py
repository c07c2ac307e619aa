"""Speed of pixelforge's diffusion models, samplers and data path, side by side with diffusers and
denoising-diffusion-pytorch.

    python scripts/benchmark.py --out benchmark.json                # default cases (minutes on a CPU)
    python scripts/benchmark.py --quick --no-peers                  # tiny sizes, 1-2 iterations: a smoke test
    python scripts/benchmark.py --cases text --compile              # also model.compile=true against eager
    python scripts/benchmark.py --cases sd --device cuda            # Stable Diffusion 1.x's model (random weights)
    python scripts/benchmark.py --cases latents,sd_latents          # training from cached latents vs encoding
    python scripts/benchmark.py --cases quality -l logs             # time to quality: trains the recipe (minutes)
    python scripts/benchmark.py --experiment ldm_shapes_clip --experiment ldm_shapes_txt2img
    python scripts/benchmark.py --cases text model.unet.model_channels=64 model.unet.num_groups=32  # a variant

The text, utilisation, sampling and data cases time the model each --experiment recipe builds, as training builds it
(a first stage it would train first is built untrained), on a batch of its datamodule: the model's own training step
and its denoiser. The latents cases time that step from cached latents against encoding the batch in the step (for
the recipes, and for Stable Diffusion at 512 px with sd_latents). The quality case trains each recipe with main.py
-t under --logdir (reusing a finished first stage there) and records the strict shape fit of held-out samples
against training wall time (callbacks.quality_curve: <run>/quality_curve.json and .png). The diffusers peer is the
same model around diffusers' UNet2DConditionModel built to the same architecture. Times are medians over timed
iterations after warm-up; ours and the peer alternate iteration by iteration, so load from other processes on the
machine falls on both alike. Peers come from the ``bench`` extra (pip install -e ".[bench]"); without them (or with
--no-peers) pixelforge is measured alone. Sizes live in pixelforge/benchmark/settings.py. Hydra overrides after the
options are laid over every --experiment recipe, as main.py would take them (not over the uncond and sd cases, which
build models of their own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from pixelforge.benchmark.cases import CASES, DEFAULT_CASES, run
from pixelforge.benchmark.peers import PEERS, import_peers
from pixelforge.benchmark.report import table
from pixelforge.benchmark.settings import settings
from pixelforge.cli import compose_config, experiments, parse

DEFAULT_EXPERIMENT = "ldm_shapes_clip"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the records as a JSON list to this file")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1-2 iterations (smoke test)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="time the steps in this precision only (default: fp32, and bf16 where the device "
                             "computes it natively: a GPU with bf16, a CPU with bf16 units)")
    parser.add_argument("--no-peers", action="store_true", help="measure pixelforge alone even if peers import")
    parser.add_argument("--compile", action="store_true",
                        help="also time the text step with model.compile=true against eager (default size)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated subset of {', '.join(CASES)} (default: all but sd, sd_latents and "
                             "quality), or all")
    parser.add_argument("-l", "--logdir", default="logs",
                        help="where the quality case trains its runs, as main.py -l (default: logs)")
    parser.add_argument("--experiment", action="append", metavar="NAME",
                        help=f"a recipe under configs/experiment/ for the text, utilisation, sampling and data cases; "
                             f"repeatable (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra overrides for every --experiment recipe (e.g. model.unet.model_channels=64)")
    args = parser.parse_args(argv)
    malformed = [override for override in args.overrides if "=" not in override]
    if malformed:
        parser.error(f"overrides must be KEY=VALUE, got {malformed}")
    args.cases = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; valid: {', '.join(CASES)}, or all")
    args.experiment = args.experiment or [DEFAULT_EXPERIMENT]
    unknown = sorted(set(args.experiment) - set(experiments()))
    if unknown:
        parser.error(f"unknown experiments {unknown}; valid: {', '.join(experiments())}")
    for experiment in args.experiment:  # a bad override fails here, not after minutes of timing
        try:
            compose_config(*parse([f"experiment={experiment}", *args.overrides]))
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            parser.error(f"--experiment {experiment}{' with ' + ' '.join(args.overrides) if args.overrides else ''}: "
                         f"{error}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    peers = import_peers(not args.no_peers)
    missing = [module for name, module in PEERS.items() if name not in peers]
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"peers: {', '.join(peers) or 'none'}"
          + (f" -- measuring pixelforge alone for {', '.join(missing)} (pip install -e '.[bench]')" if missing
             else ""), flush=True)
    cfg = settings(args.quick)
    cfg["recipe"]["overrides"] += args.overrides  # after --quick's sizes, so the user's word wins over them
    try:
        records = run(args.cases, args.experiment, cfg, peers, device, args.compile, args.precision,
                      str(args.logdir))
    except (ValueError, RuntimeError) as error:
        print(f"benchmark.py: error: {error}", file=sys.stderr)
        return 2
    print(table(records))
    if args.out:
        args.out.write_text(json.dumps(records, indent=2))
        print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
