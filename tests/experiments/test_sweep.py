"""``speechxfer sweep``: spec validation, Optuna study (SQLite, resumable, pruning), W&B export."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.demos.boring_classes import BoringModel

from callbacks.run_summary import RunSummary
from experiments import compare, sweep
from experiments.sweep_spec import SweepSpecError, check_keys, load_spec, parse_config
from tests.conftest import FixedContract

REPO = Path(__file__).resolve().parents[2]


# --- a tiny model/datamodule the training CLI can build (class_path: test_sweep.*) --------------


class ToyTokenizer:
    def to_dict(self) -> dict:
        return {"kind": "toy"}


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.x = torch.randn(n, 32, generator=torch.Generator().manual_seed(n))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"audio": self.x[i], "lengths": torch.tensor(32)}


class ToyData(FixedContract):
    """Speech-like dict batches (audio (B, 32), lengths (B,)) behind the datamodule contract the CLI reads."""

    tokenizer = ToyTokenizer()
    batches_per_epoch = 16

    def train_dataloader(self):
        return torch.utils.data.DataLoader(ToyDataset(64), batch_size=4)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(ToyDataset(16), batch_size=4)


class ToyModel(BoringModel):
    """Linear regression whose validation MSE is logged as ``val/source/wer``; ``lr`` matters."""

    def __init__(self, tokenizer: dict | None = None, lr: float = 0.01, momentum: float = 0.0,
                 optimizer: str = "sgd"):
        super().__init__()
        self.lr, self.momentum, self.optimizer_name = lr, momentum, optimizer

    def training_step(self, batch, batch_idx):
        return self.step(batch["audio"])

    def validation_step(self, batch, batch_idx):
        self.log("val/source/wer", self.step(batch["audio"]))

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


TOY_CONFIG = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 6, "val_check_interval": 2, "limit_train_batches": 6,
                "limit_val_batches": 2, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                "enable_model_summary": False, "log_every_n_steps": 1},
    "model": {"class_path": "tests.experiments.test_sweep.ToyModel", "init_args": {"lr": 0.01}},
    "data": {"class_path": "tests.experiments.test_sweep.ToyData"},
}


def write_spec(tmp_path: Path, **overrides) -> Path:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY_CONFIG))
    spec = {
        "config": str(config),
        "metric": "val/source/wer",
        "direction": "minimize",
        "n_trials": 2,
        "fixed_args": ["--wandb=false", "--checkpoint_every_n_steps=1000"],
        "pruner": {"type": "median", "warmup_steps": 2},
        "sampler": {"type": "tpe", "seed": 0},
        "parameters": {
            "model.init_args.lr": {"distribution": "log_uniform", "min": 1e-3, "max": 0.5},
            "model.init_args.momentum": {"distribution": "uniform", "min": 0.0, "max": 0.9},
            "trainer.accumulate_grad_batches": {"distribution": "int_uniform", "min": 1, "max": 2},
            "model.init_args.optimizer": {"distribution": "categorical", "values": ["sgd", "adam"]},
        },
        **overrides,
    }
    path = tmp_path / "toy_sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def best_logged(run_dir: Path, metric: str) -> float:
    with open(run_dir / "metrics.csv") as f:
        return min(float(row[metric]) for row in csv.DictReader(f) if row.get(metric))


# --- spec validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"metric": None}, "missing required field 'metric'"),
        ({"parameters": {"model.init_args.lr": {"distribution": "loguniform", "min": 1, "max": 2}}},
         "unknown distribution 'loguniform'"),
        ({"parameters": {"model.init_args.lr": {"distribution": "log_uniform", "min": 0, "max": 2}}}, "min > 0"),
        ({"parameters": {"trainer.max_steps": {"distribution": "int_uniform", "min": 1.5, "max": 2}}}, "integers"),
        ({"parameters": {"model.init_args.optimizer": {"distribution": "categorical", "values": []}}}, "non-empty"),
        ({"direction": "down"}, "direction must be one of"),
        ({"pruner": "hyperband"}, "pruner: unknown type 'hyperband'"),
        ({"budget": 3}, "unknown field(s) ['budget']"),
        ({"config": "nope.yaml"}, "config 'nope.yaml' not found"),
    ],
)
def test_bad_spec_is_rejected_with_file_and_reason(tmp_path, override, message):
    path = write_spec(tmp_path, **override)
    with pytest.raises(SweepSpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("key", "dist", "message"),
    [
        ("model.init_args.lrr", {"distribution": "uniform", "min": 0.1, "max": 0.2}, "lrr"),
        ("trainer.max_steps", {"distribution": "categorical", "values": [5, "many"]}, "max_steps"),
    ],
)
def test_keys_are_checked_against_the_cli_parser(tmp_path, key, dist, message):
    spec = load_spec(write_spec(tmp_path, parameters={key: dist}))
    with pytest.raises(SweepSpecError) as err:
        check_keys(spec)
    assert message in str(err.value) and "toy_sweep.yaml" in str(err.value)


def test_the_documented_example_spec_is_valid(tmp_path, monkeypatch):
    """The YAML in sweep_spec's docstring passes load_spec and the CLI key check (no made-up keys)."""
    import experiments.sweep_spec as sweep_spec

    monkeypatch.chdir(REPO)
    example = sweep_spec.__doc__.split(".. code-block:: yaml")[1].split("\n\n")[1]
    spec_path = tmp_path / "example.yaml"
    spec_path.write_text(textwrap.dedent(example))
    spec = load_spec(spec_path)
    assert len(spec.parameters) == 5 and spec.pruner["warmup_steps"] == 2
    check_keys(spec)


def test_parse_config_reads_overrides_without_instantiating(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    config = parse_config(["fit", "--config", spec.config, "--model.init_args.lr=0.25", "--trainer.max_steps=9"])
    assert config.fit.model.init_args.lr == 0.25 and config.fit.trainer.max_steps == 9
    check_keys(spec)  # the valid spec passes


# --- optuna backend -------------------------------------------------------------------------------


QUICKSTART = REPO / "experiments" / "scratch_demo.yaml"  # from scratch: quickstart.yaml fine-tunes the shipped model
TINY_TRIAL = ["--wandb=false", "--trainer.max_steps=2", "--trainer.max_epochs=1",
              "--trainer.check_val_every_n_epoch=null", "--trainer.val_check_interval=1",
              "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false",
              "--data.init_args.max_duration=10", "--data.init_args.num_workers=0", "--checkpoint_every_n_steps=1000"]


@pytest.mark.slow  # end-to-end, > 30 s on 2 cores
def test_optuna_sweep_on_demo_corpus_records_trials_in_sqlite_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the demo data config uses repo-relative paths
    spec_path = write_spec(
        tmp_path, config=str(QUICKSTART), metric="val/target/wer", fixed_args=TINY_TRIAL,
        parameters={"model.init_args.lr": {"distribution": "log_uniform", "min": 1e-3, "max": 1e-2},
                    "model.init_args.dropout": {"distribution": "uniform", "min": 0.0, "max": 0.3},
                    "model.init_args.warmup_steps": {"distribution": "int_uniform", "min": 0, "max": 5},
                    "model.init_args.decay": {"distribution": "categorical", "values": ["cosine", "linear"]}},
    )
    runs = tmp_path / "runs"
    assert sweep.main([str(spec_path), "--runs-dir", str(runs)]) == 0
    storage = f"sqlite:///{runs}/sweeps/toy_sweep.db"
    study = optuna.load_study(study_name="toy_sweep", storage=storage)
    assert len(study.trials) == 2
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == runs / "sweep-toy_sweep" / f"trial-{trial.number}"
        logged = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]
        for key, value in trial.params.items():  # every sampled value reached the run's resolved config
            assert logged[key.removeprefix("model.init_args.")] == pytest.approx(value)
        assert trial.state == optuna.trial.TrialState.COMPLETE  # 3 startup trials before the median pruner acts
        assert trial.value == pytest.approx(best_logged(run_dir, "val/target/wer"))  # best WER of that run
    out = capsys.readouterr().out
    assert "trial-0" in out and "trial-1" in out and "best: trial" in out

    # rerunning continues the same study
    assert sweep.main([str(spec_path), "--runs-dir", str(runs), "--n-trials", "1"]) == 0
    study = optuna.load_study(study_name="toy_sweep", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert (runs / "sweep-toy_sweep" / "trial-2" / "metrics.csv").is_file()

    # the trial runs are ordinary runs: the comparison report reads them
    assert compare.main([str(runs / "sweep-toy_sweep"), "--out", str(tmp_path / "report"), "--format", "md"]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    for trial in study.trials:
        row = next(line for line in report.splitlines() if f"sweep-toy_sweep/trial-{trial.number} " in line)
        assert "ScratchEncoder" in row and "LibriSpeech train-clean-100" in row
        assert f"{100 * trial.value:.2f}" in row


def test_pruning_callback_reports_and_prunes(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-12))  # prunes any positive loss
    trial = study.ask()
    pruning = sweep.OptunaPruning(trial, "val/source/wer")
    trainer = Trainer(default_root_dir=str(tmp_path), max_steps=6, val_check_interval=2, limit_val_batches=1,
                      num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[pruning, RunSummary()])
    with pytest.raises(optuna.TrialPruned, match="pruned at step 2"):
        trainer.fit(ToyModel(), datamodule=ToyData())
    assert trainer.global_step == 2 and pruning.best is not None
    assert yaml.safe_load((tmp_path / "summary.json").read_text())["status"] == "pruned"


def test_missing_metric_fails_the_trial_with_a_clear_reason(tmp_path, capsys):
    spec_path = write_spec(tmp_path, metric="val/target/wer", n_trials=1,
                           parameters={"model.init_args.lr": {"distribution": "uniform", "min": 0.01, "max": 0.1}})
    assert sweep.main([str(spec_path), "--runs-dir", str(tmp_path / "runs")]) == 1
    study = optuna.load_study(study_name="toy_sweep", storage=f"sqlite:///{tmp_path}/runs/sweeps/toy_sweep.db")
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert "no trial completed" in capsys.readouterr().out


# --- wandb backend --------------------------------------------------------------------------------


def test_wandb_export_of_shipped_spec_is_a_valid_sweep_whose_command_runs(tmp_path, monkeypatch):
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    monkeypatch.chdir(REPO)
    out = tmp_path / "sweep.wandb.yaml"
    spec = "experiments/sweeps/quickstart_lr.yaml"
    assert sweep.main([spec, "--backend", "wandb", "--out", str(out), "--wandb-project", "proj"]) == 0  # keys checked
    config = yaml.safe_load(out.read_text())
    assert config["metric"] == {"name": "val/target/wer", "goal": "minimize"}
    assert config["method"] == "bayes" and config["program"] == "speechxfer" and config["project"] == "proj"
    params = config["parameters"]
    assert params["model.init_args.lr"] == {"distribution": "log_uniform_values", "min": 3e-4, "max": 1e-2}
    assert params["model.init_args.warmup_steps"] == {"distribution": "int_uniform", "min": 0, "max": 100}
    assert params["model.init_args.dropout"]["distribution"] == "uniform"
    assert params["model.init_args.decay"] == {"values": ["cosine", "linear"]}
    command = config["command"]
    assert command[:5] == ["${env}", "speechxfer", "fit", "--config", "experiments/quickstart.yaml"]
    assert command[-1] == "${args}"

    # what the agent runs: ${args} becomes --key=value (python str of each sampled value)
    sampled = {"model.init_args.lr": 0.001, "model.init_args.warmup_steps": 7, "model.init_args.dropout": 0.25,
               "model.init_args.decay": "linear"}
    agent_args = create_sweep_command_args({"args": {k: {"value": v} for k, v in sampled.items()}})["args"]
    parsed = parse_config(command[2:-1] + agent_args).fit
    init = parsed.model.init_args
    assert (init.lr, init.warmup_steps, init.dropout, init.decay) == (0.001, 7, 0.25, "linear")
    assert parsed.experiment == "sweep-quickstart_lr" and parsed.wandb_project == "proj"
    assert parsed.wandb is True  # the spec's --wandb=false is for local Optuna trials only

    # and the command line itself is accepted by the real entry point
    result = subprocess.run([sys.executable, "-m", "experiments", *command[2:-1], *agent_args, "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--trainer.max_steps" in result.stdout and "--model.help" in result.stdout
