"""main.py's command line: CompVis flags, Hydra overrides, -b merging, clear errors, run directories, resume."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from pixelforge.cli import compose_config, experiments, flag_overrides, main, parse
from pixelforge.train import make_run_dir, run

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiment=classifier_cnn_digits", "callbacks.progress_bar=null", "callbacks.model_summary=null",
        "trainer.num_sanity_val_steps=0", "trainer.deterministic=true", "trainer.accelerator=cpu",
        "trainer.devices=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "callbacks.image_logger.every_n_steps=2"]


def config(argv: list[str]):
    return compose_config(*parse(argv))


def run_dirs(logdir: Path) -> list[Path]:
    return sorted(p for p in logdir.iterdir() if p.is_dir())


def test_flags_translate_to_run_keys() -> None:
    args, overrides = parse(["-t", "--no-test", "-n", "mine", "-f", "_v2", "-l", "out", "-s", "0",
                             "--scale_lr", "false", "trainer.max_epochs=3"])
    assert overrides == ["trainer.max_epochs=3"]
    assert flag_overrides(args) == ["train=true", "test=false", "name=mine", "postfix=_v2", "logdir=out",
                                    "seed=0", "scale_lr=false"]
    cfg = compose_config(args, overrides)
    assert (cfg.train, cfg.test, cfg.name, cfg.postfix, cfg.seed, cfg.scale_lr) == (True, False, "mine", "_v2", 0,
                                                                                     False)
    assert cfg.trainer.max_epochs == 3


def test_defaults_and_experiment_name() -> None:
    cfg = config([])
    assert cfg.seed == 23 and cfg.logdir == "logs" and cfg.scale_lr and not cfg.train
    assert cfg.name == "ldm_shapes_clip"  # python main.py -t trains the text-to-image recipe
    assert cfg.model._target_.endswith("DiffusionModel") and cfg.data.dataset._target_.endswith("ShapesDataset")
    assert cfg.model.first_stage.experiment == "autoencoder_kl_shapes"
    assert cfg.model.conditioner.caption.encoder.experiment == "clip_shapes"
    assert config(["experiment=classifier_vit_mnist5k"]).name == "classifier_vit_mnist5k"


def test_overrides_reach_nested_keys_and_groups() -> None:
    cfg = config(["model.optimizer.lr=3e-4", "data.batch_size=64", "+trainer.profiler=simple", "optimizer=sgd"])
    assert cfg.model.optimizer.lr == 3e-4 and cfg.data.batch_size == 64 and cfg.trainer.profiler == "simple"
    assert cfg.model.optimizer._target_ == "torch.optim.SGD"


def test_base_configs_merge_left_to_right_under_command_line(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("data: {batch_size: 7}\ntrainer: {max_epochs: 5}\nextra: {note: first}\n")
    second.write_text("trainer: {max_epochs: 9}\nextra: {note: second}\n")
    cfg = config(["-b", str(first), str(second), "data.batch_size=11"])
    assert cfg.trainer.max_epochs == 9 and cfg.extra.note == "second"
    assert cfg.data.batch_size == 11  # the command line wins over -b files


@pytest.mark.parametrize(("argv", "needle"), [
    (["model.optimizer.lrr=3"], "model.optimizer.lrr"),
    (["experiment=nope"], "experiment/nope"),
    (["data=imagenet"], "data/imagenet"),
    (["trainer.max_epochs=[oops"], "[oops"),
    (["optimizer=adamm"], "optimizer/adamm"),
    (["-b", "missing.yaml"], "missing.yaml"),
    (["-r", "no/such/run"], "no/such/run"),
    ([], "nothing to do"),
])
def test_bad_command_lines_fail_with_a_message_naming_the_value(argv, needle, capsys) -> None:
    assert main(argv) != 0
    assert needle in capsys.readouterr().err


def test_unknown_flags_and_name_with_resume_are_rejected(capsys) -> None:
    for argv in (["--bogus"], ["-r", "x", "-n", "y"], ["train"]):
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 2
    assert "cannot be combined" in capsys.readouterr().err


def test_print_config_prints_resolved_yaml(capsys) -> None:
    assert main(["--print-config", "experiment=classifier_cnn_shapes", "-s", "5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["data"]["seed"] == 5
    assert printed["model"]["targets"] == {"shape": 3, "color": 7, "size": 2, "position": 5}


def test_help_lists_flags_and_experiments() -> None:
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for word in ("--train", "--base", "--resume", "--logdir", "--scale_lr", *experiments()):
        assert word in out


def test_run_directories_are_unique_and_seed_zero_is_kept(tmp_path: Path) -> None:
    cfg = config(["-l", str(tmp_path), "-n", "same", "-s", "0"])
    assert cfg.seed == 0
    dirs = {make_run_dir(cfg) for _ in range(3)}
    assert len(dirs) == 3 and all(d.name.split("_", 1)[1].startswith("same") for d in dirs)
    debug = config(["-l", str(tmp_path), "-d"])
    assert make_run_dir(debug).parent == (tmp_path / "debug_runs").resolve()


def test_train_writes_the_compvis_run_layout(tmp_path: Path) -> None:
    metrics = run(config(["-t", "-l", str(tmp_path), "-f", "_x", *TINY, "trainer.max_epochs=1"]))
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.name.endswith("_classifier_cnn_digits_x")
    saved = OmegaConf.load(run_dir / "configs" / "config.yaml")
    assert saved.run_dir == str(run_dir) and saved.train
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents*"))
    assert list((run_dir / "images" / "train").glob("predictions_gs-000001_*.png"))
    assert list((run_dir / "images" / "val").glob("predictions_*.png"))
    assert {"test/acc", "test/loss"} <= set(metrics)
    assert not (REPO / "outputs").exists() and not (tmp_path / "outputs").exists()


def test_scale_lr_multiplies_base_learning_rate(tmp_path: Path, caplog) -> None:
    argv = ["-t", "--no-test", "-l", str(tmp_path), *TINY, "trainer.max_steps=1", "data.batch_size=16",
            "trainer.accumulate_grad_batches=2", "model.base_learning_rate=1e-4"]
    run(config(argv))
    assert "Setting learning rate to 3.20e-03 = 2 (accumulate_grad_batches) * 1 (devices)" in caplog.text
    caplog.clear()
    run(config([*argv, "--scale_lr", "false"]))
    assert "Setting learning rate to 1.00e-04" in caplog.text


def last_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], int, int]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"], ckpt["epoch"]


def test_resume_after_the_warm_up_continues_to_the_same_weights(tmp_path: Path) -> None:
    argv = ["-t", "--no-test", "-l", str(tmp_path / "logs"), *TINY, "trainer.max_epochs=4",
            "model.scheduler.warmup_steps=2", "callbacks.model_checkpoint.save_top_k=-1"]
    run(config(argv))
    (straight,) = run_dirs(tmp_path / "logs")
    expected, step, epoch = last_weights(straight)
    assert (step, epoch) == (16, 3)
    copy = tmp_path / "copy" / straight.name
    shutil.copytree(straight, copy)  # a copy, resumed from the end of epoch 2 (steps 3-8 were already cosine decay)
    assert main(["-t", "--no-test", "-r", str(copy / "checkpoints" / "epoch=001-step=000008.ckpt")]) == 0
    resumed, resumed_step, resumed_epoch = last_weights(copy)
    assert (resumed_step, resumed_epoch) == (16, 3)
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)


def test_resume_with_a_longer_run_resizes_the_schedule_and_says_so(tmp_path: Path, caplog) -> None:
    argv = ["-t", "--no-test", "-l", str(tmp_path), *TINY, "model.scheduler.warmup_steps=2"]
    run(config([*argv, "trainer.max_epochs=2"]))
    (first,) = run_dirs(tmp_path)
    assert torch.load(first / "checkpoints" / "last.ckpt")["lr_schedulers"][0]["total_steps"] == 8
    with pytest.warns(UserWarning, match=r"sized for 8 steps and this run has 16: from step 8 on it follows the "
                                         r"16-step schedule, so the lr goes from .* to 0.000[0-9]+"):
        assert main(["-t", "--no-test", "-r", str(first), "trainer.max_epochs=4"]) == 0
    ckpt = torch.load(first / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 16 and ckpt["lr_schedulers"][0]["total_steps"] == 16


def test_resume_rejects_group_swaps_and_tests_without_train(tmp_path: Path, capsys) -> None:
    run(config(["-t", "--no-test", "-l", str(tmp_path), *TINY, "trainer.max_steps=2"]))
    (run_dir,) = run_dirs(tmp_path)
    assert main(["-r", str(run_dir), "data=shapes"]) == 2
    assert "cannot change config group 'data'" in capsys.readouterr().err
    metrics = run(config(["-r", str(run_dir / "checkpoints" / "last.ckpt")]))  # no -t: test only
    assert "test/acc" in metrics and run_dirs(tmp_path) == [run_dir]


def test_multirun_sweeps_into_one_parent_folder(tmp_path: Path) -> None:
    argv = ["-m", "-t", "--no-test", "-l", str(tmp_path), *TINY, "trainer.max_epochs=1", "data.batch_size=8,16"]
    assert main(argv) == 0
    (parent,) = (tmp_path / "multirun").iterdir()
    jobs = run_dirs(parent)  # one folder per job, each with its run and result.yaml
    assert [job.name for job in jobs] == ["0", "1"] and list(tmp_path.iterdir()) == [tmp_path / "multirun"]
    results = [OmegaConf.load(job / "result.yaml") for job in jobs]
    sizes = [OmegaConf.load(Path(r.run_dir) / "configs" / "config.yaml").data.batch_size for r in results]
    assert sizes == [8, 16] and [r.exit_code for r in results] == [0, 0]
    assert all(r.monitor == "val/acc" and 0 <= r.best <= 1 for r in results)  # the monitored metric, per job


def checkpoint_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def test_resume_after_sigterm_keeps_updating_last_ckpt(tmp_path: Path) -> None:
    fault = ["+callbacks.fault._target_=fault_injection.SigtermAt", "+callbacks.fault.step=3"]
    argv = ["-t", "--no-test", "-l", str(tmp_path), *TINY, "trainer.max_epochs=2"]
    assert main([*argv, *fault]) == 128 + signal.SIGTERM
    (run_dir,) = run_dirs(tmp_path)
    assert last_weights(run_dir)[1] == 3  # SaveOnInterrupt wrote last.ckpt; ModelCheckpoint never saved
    assert main(["-t", "--no-test", "-r", str(run_dir), "callbacks.fault=null"]) == 0
    assert last_weights(run_dir)[1] == 8 and "last-v1.ckpt" not in checkpoint_files(run_dir)
    assert main(["-t", "--no-test", "-r", str(run_dir), "trainer.max_epochs=3"]) == 0
    assert last_weights(run_dir)[1] == 12 and [n for n in checkpoint_files(run_dir) if n.startswith("last")] == [
        "last.ckpt"]


def test_a_moved_run_resumes_into_its_new_directory(tmp_path: Path) -> None:
    run(config(["-t", "--no-test", "-l", str(tmp_path / "logs"), *TINY, "trainer.max_epochs=1"]))
    (old,) = run_dirs(tmp_path / "logs")
    new = tmp_path / "elsewhere" / old.name
    new.parent.mkdir()
    old.rename(new)
    assert main(["-t", "-r", str(new), "trainer.max_epochs=2"]) == 0
    assert not old.exists() and run_dirs(tmp_path / "logs") == []
    saved = OmegaConf.load(new / "configs" / "config.yaml")
    assert saved.run_dir == str(new) and saved.callbacks.model_checkpoint.dirpath == str(new / "checkpoints")
    state, step, _ = last_weights(new)
    assert step == 8 and len(list((new / "tensorboard").glob("events.out.tfevents*"))) >= 2
    ckpt = torch.load(new / "checkpoints" / "last.ckpt", weights_only=False)
    (checkpoint_state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    paths = [checkpoint_state["best_model_path"], checkpoint_state["last_model_path"],
             *checkpoint_state["best_k_models"]]
    assert all(Path(p).parent == new / "checkpoints" and Path(p).is_file() for p in paths), paths


@pytest.mark.parametrize(("override", "needle"), [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc': Trainer expects int or None"),
    ("trainer.precision=17", "trainer.precision=17: Trainer expects one of 64, 32, 16"),
    ("model.optimizer.lr=abc", "model.optimizer.lr='abc': AdamW expects float"),
    ("+model.dropout=0.5", "model.dropout: ImageClassifier takes no argument 'dropout'"),
    ("data.batch_size=-4", "data: data.batch_size must be a positive integer, got -4"),
    ("trainer.devices=abc", "trainer: `devices` selected with `CPUAccelerator` should be an int > 0"),
    ("model.backbone.channels=[]", "model.backbone: need at least one stage"),
])
def test_bad_values_fail_in_one_line_before_a_run_directory_exists(tmp_path: Path, capsys, override: str,
                                                                   needle: str) -> None:
    assert main(["-t", "-l", str(tmp_path), *TINY, override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not tmp_path.exists() or run_dirs(tmp_path) == []


def test_malformed_base_yaml_names_the_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "extra.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n bad: [\n")
    assert main(["-t", "-l", str(tmp_path / "logs"), "-b", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} is not valid YAML at line 3, column 2" in err and len(err.strip().splitlines()) == 1
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    assert main(["-b", str(listed), "--print-config"]) == 2
    assert "must hold a mapping of config keys" in capsys.readouterr().err


def test_experiment_outside_the_experiment_folder_is_refused(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("# @package _global_\nname: evil\n")
    climb = "../" * len(REPO.parts)  # from configs/experiment/ up to / (extra ../ stay at /)
    assert main(["-t", "-l", str(tmp_path / "logs"), f"experiment={climb}{evil.with_suffix('')}"]) == 2
    err = capsys.readouterr().err
    assert "unknown config experiment/" in err and "classifier_cnn_digits" in err and "-b FILE" in err
    assert not (tmp_path / "logs").exists()


def test_help_and_print_config_import_neither_torch_nor_lightning() -> None:
    code = ("import contextlib, io, sys\n"
            "from pixelforge.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--print-config', 'experiment=classifier_cnn_digits']) == 0\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit as exit_:\n"
            "        assert exit_.code == 0\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_resumed_run_keeps_its_config_when_an_override_cannot_be_built(tmp_path: Path, capsys) -> None:
    run(config(["-t", "--no-test", "-l", str(tmp_path), *TINY, "trainer.max_steps=2"]))
    (run_dir,) = run_dirs(tmp_path)
    saved = (run_dir / "configs" / "config.yaml").read_text()
    assert main(["-t", "-r", str(run_dir), "trainer.devices=abc"]) == 2
    assert "trainer: `devices` selected with `CPUAccelerator`" in capsys.readouterr().err
    assert (run_dir / "configs" / "config.yaml").read_text() == saved and run_dirs(tmp_path) == [run_dir]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
