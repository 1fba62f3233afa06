"""Every experiment config runs: fast_dev_run smoke tests, --print_config, component YAMLs, a real short run.

Configs naming real data roots or downloadable bundles run on tiny stand-ins (``tests/cli_helpers.py``):
generated tone-speech corpora, a 2-layer torchaudio encoder with local weights, a CPU fp32 trainer,
and a quickstart checkpoint for ``CheckpointBackbone``. New ``experiments/*.yaml`` files are picked
up by the glob.
"""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from experiments.cli import build_cli
from tests.cli_helpers import (
    COMPONENT_CONFIGS,
    EXPERIMENT_CONFIGS,
    EXPERIMENTS,
    in_process_cli,
    load_ckpt,
    read_metrics,
    shared_quickstart_run,
    shared_workdir,
    tiny_config,
)


@pytest.fixture
def quiet_cli(tmp_path):
    """In-process CLI runs from an empty temp cwd (see ``in_process_cli``)."""
    with in_process_cli(cwd=tmp_path):
        yield tmp_path


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    return shared_quickstart_run(tmp_path_factory)


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return shared_workdir(tmp_path_factory)


def no_downloads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test config tried to download: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def print_config(args: list[str]) -> dict:
    """``speechxfer fit ... --print_config`` in-process; the printed YAML, parsed."""
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None), out.getvalue()
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run(config: Path, work, quiet_cli, request, monkeypatch):
    ckpt = None
    if "CheckpointBackbone" in config.read_text():
        ckpt = request.getfixturevalue("quickstart_run") / "checkpoints" / "last.ckpt"
    no_downloads(monkeypatch)
    tiny = tiny_config(config, work / config.stem, ckpt=ckpt)
    cli = build_cli(["fit", "--config", str(tiny), "--trainer.fast_dev_run=true"])

    expected = yaml.safe_load(config.read_text())
    assert type(cli.model).__name__ == expected["model"]["class_path"].rsplit(".", 1)[-1]
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    for domain in cli.datamodule.val_domains:  # one validation batch per domain ran and logged
        assert 0.0 <= float(metrics[f"val/{domain}/wer"])
    for callback in expected.get("callbacks", []):
        name = callback["class_path"].rsplit(".", 1)[-1]
        assert any(type(cb).__name__ == name for cb in cli.trainer.callbacks), name
    assert not list(quiet_cli.glob("runs")), "fast_dev_run must not create run directories"


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.stem)
def test_print_config(config: Path, quiet_cli):
    printed = print_config(["--config", str(config)])
    expected = load_yaml(config)
    assert printed["experiment"] == expected["experiment"]
    assert printed["model"]["class_path"] == expected["model"]["class_path"]
    assert printed["data"]["class_path"] == load_yaml(config.parent / expected["data"])["class_path"]
    trainer = expected["trainer"] if isinstance(expected["trainer"], dict) else load_yaml(config.parent / expected["trainer"])
    assert printed["trainer"]["accelerator"] == trainer["accelerator"]
    assert [c["class_path"] for c in printed.get("callbacks") or []] == \
        [c["class_path"] for c in expected.get("callbacks") or []]


@pytest.mark.parametrize("component", COMPONENT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_component_yaml_parses(component: Path, quiet_cli):
    key = component.parent.name  # experiments/data/*.yaml -> --data, experiments/trainer/*.yaml -> --trainer
    printed = print_config(["--config", str(EXPERIMENTS / "quickstart.yaml"), f"--{key}", str(component)])
    content = load_yaml(component)
    if key == "data":
        assert printed["data"]["class_path"] == content["class_path"]
    else:
        assert {k: printed["trainer"][k] for k in content} == content


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def test_quickstart_run_writes_the_run_directory(quickstart_run: Path):
    run = quickstart_run
    assert (run.parent / "latest").resolve() == run.resolve()
    config = load_yaml(run / "config.yaml")
    assert config["trainer"]["max_steps"] == 2 and config["run_name"] == run.name

    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert ckpt["speechxfer"]["module_class"] == "lightning_modules.finetune.FineTuneCTC"
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1, "best checkpoint by val/target/wer"

    metrics = read_metrics(run)
    assert {"train/loss_step", "val/source/wer", "val/target/wer", "val/source/cer"} <= set(metrics)
    assert all(re.fullmatch(r"[\w/.\-]+", k) for k in metrics)

    offline_runs = list((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb")), "the offline run holds its log file"

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert "val/target/wer" in summary["best"]
