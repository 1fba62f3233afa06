"""The ``speechxfer`` command.

Training subcommands are LightningCLI's, driven by one YAML per experiment::

    speechxfer fit --config experiments/quickstart.yaml
    speechxfer fit --config experiments/quickstart.yaml --print_config
    speechxfer fit --config experiments/quickstart.yaml --model.init_args.lr 3e-4 --trainer.max_steps 200
    speechxfer fit --config experiments/quickstart.yaml --run_name r1 --ckpt_path last   # resume
    speechxfer validate|test --config experiments/quickstart.yaml --ckpt_path runs/.../best.ckpt

Tools with their own arguments::

    speechxfer transcribe --ckpt model.ckpt audio.flac [more files or folders]
    speechxfer adapt --ckpt model.ckpt --support spk/ --steps 5 --lr 0.05 --out spk.ckpt
    speechxfer lm --ckpt model.ckpt --data experiments/data/demo_source.yaml   # n-gram LM + lexicon
    speechxfer sweep experiments/sweeps/quickstart_lr.yaml --backend optuna
    speechxfer compare runs/quickstart/* --out report/
    speechxfer slurm experiments/librispeech_finetune_wav2vec2.yaml --nodes 2 --gpus-per-node 4
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from datamodules.base import SpeechDataModule
from datamodules.locales import monitored_metric
from experiments.runs import checkpoint_callbacks, default_loggers, resolve_run_dir

TOOLS = {  # name -> module whose main(argv) runs it
    "transcribe": "experiments.transcribe",
    "adapt": "experiments.adapt",
    "lm": "experiments.lm",
    "sweep": "experiments.sweep",
    "compare": "experiments.compare",
    "slurm": "experiments.slurm",
}
TRAINER_DEFAULTS = {
    # lhotse's duration samplers shard batches across ranks themselves.
    "use_distributed_sampler": False,
}


def _tokenizer_dict(datamodule: SpeechDataModule) -> dict:
    return datamodule.tokenizer.to_dict()


class SpeechCLI(LightningCLI):
    """LightningCLI plus run directories, default loggers/checkpoints and the data → model tokenizer link.

    ``data`` must be a ``datamodules.SpeechDataModule`` (the parser rejects other classes); the model's
    ``tokenizer`` init argument is linked from it (the vocabulary size follows from the tokenizer).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str, default="default", help="Run group: runs/<experiment>/")
        parser.add_argument("--run_name", type=str | None, default=None, help="Run version (default: timestamp)")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Root folder of all runs")
        parser.add_argument("--wandb", type=bool, default=True, help="Log to W&B (offline without an API key)")
        parser.add_argument("--wandb_project", type=str, default="speechxfer")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=100, help="Refresh last.ckpt this often")
        parser.add_argument(
            "--callbacks", type=list[Callback], default=[], help="Experiment callbacks, added to trainer.callbacks"
        )
        parser.link_arguments("data", "model.init_args.tokenizer", compute_fn=_tokenizer_dict, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        callbacks += self._get(self.config_init, "callbacks", default=None) or []
        if trainer_config.get("fast_dev_run"):
            return self._instantiate_trainer(trainer_config, callbacks)

        resume_last = str(config.get("ckpt_path")) == "last"
        run_dir = resolve_run_dir(config.runs_dir, config.experiment, config.run_name, resume_last)
        trainer_config["default_root_dir"] = str(run_dir)
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = default_loggers(
                run_dir, config.experiment, run_tags(self.model, self.datamodule), config.wandb, config.wandb_project
            )
        user_callbacks = trainer_config.get("callbacks") or []
        callbacks += default_callbacks(user_callbacks + callbacks, with_logger=bool(trainer_config["logger"]))
        if trainer_config.get("enable_checkpointing", True) is not False and not any(
            type(cb).__name__ == "ModelCheckpoint" for cb in user_callbacks
        ):
            callbacks += checkpoint_callbacks(
                run_dir, monitored_metric(self.datamodule), config.checkpoint_every_n_steps
            )
        return self._instantiate_trainer(trainer_config, callbacks)


def default_callbacks(present: list[Callback], with_logger: bool = True) -> list[Callback]:
    """Callbacks every run gets unless the config already has one of the same type."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    from callbacks import (
        AudioThroughput, RandomState, ResumeAtEpochEnd, RunSummary, SlurmRequeue, WandbAdaptationCurve,
        WandbLayerWeights, WandbValidationSamples,
    )

    have = {type(cb) for cb in present}
    wanted = [RunSummary, AudioThroughput, WandbValidationSamples, WandbLayerWeights, WandbAdaptationCurve,
              ResumeAtEpochEnd, RandomState]
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        wanted.append(SlurmRequeue)  # checkpoint + requeue on sbatch --signal=SIGUSR1@90
    added = [cls() for cls in wanted if cls not in have]
    if with_logger and LearningRateMonitor not in have:  # lr/<param group> every log_every_n_steps
        added.append(LearningRateMonitor(logging_interval="step"))
    return added


def run_tags(model: LightningModule, datamodule: SpeechDataModule) -> list[str]:
    """W&B tags: method (the module's class name), backbone and validation domains."""
    from callbacks.run_summary import describe_backbone

    tags = [f"method:{type(model).__name__}"]
    if (backbone := describe_backbone(model)) is not None:
        tags.append(f"backbone:{backbone['name']}")
    return tags + [f"domain:{domain}" for domain in datamodule.val_domains]


def build_cli(
    args: Sequence[str] | None = None,
    run: bool = True,
    cli_class: type[SpeechCLI] | None = None,
    exit_on_error: bool = True,
) -> SpeechCLI:
    """Build (and by default run) the training CLI; ``args`` as on the command line.

    ``cli_class`` lets tools (sweeps, config checks) extend SpeechCLI; ``exit_on_error=False``
    raises jsonargparse's ArgumentError instead of exiting.
    """
    return (cli_class or SpeechCLI)(
        LightningModule,
        SpeechDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False, "exit_on_error": exit_on_error},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: tools by name, everything else goes to LightningCLI."""
    # Denormal floats (near-silent audio, decaying LSTM/CTC gradients) are ~5x slower on x86 CPUs;
    # flushing them to zero costs no accuracy at fp32 and is a no-op on GPU kernels.
    torch.set_flush_denormal(True)
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return int(importlib.import_module(TOOLS[args[0]]).main(args[1:]) or 0)
    build_cli(None if argv is None else args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
