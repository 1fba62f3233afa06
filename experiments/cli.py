"""The ``speechxfer`` command.

Training subcommands are LightningCLI's, driven by one YAML per experiment::

    speechxfer fit --config experiments/quickstart.yaml
    speechxfer fit --config experiments/quickstart.yaml --print_config
    speechxfer fit --config experiments/quickstart.yaml --model.init_args.lr 3e-4 --trainer.max_steps 200
    speechxfer fit --config experiments/quickstart.yaml --run_name r1 --ckpt_path last   # resume (must exist)
    speechxfer fit --config experiments/quickstart.yaml --ckpt_path last_if_any   # resume if possible, else start
    speechxfer validate|test --config experiments/quickstart.yaml --ckpt_path runs/.../best.ckpt
    speechxfer test --config experiments/quickstart.yaml --ckpt_path ... --tta.method suta --tta.steps 10  # TTA

``--ckpt_path last`` resumes the newest run of the experiment that has ``checkpoints/last.ckpt`` (or
the ``--run_name`` run) and is an error when there is none; ``last_if_any`` starts fresh instead.
Checkpoints are written atomically and loaded weights-only (``lightning_modules.checkpoint_io``).
A bad input file or checkpoint ends the command with a short message (file, reason, what to do) and
exit status 2; for a fit stopped for a SLURM requeue see ``experiments/slurm_signal.py``.

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
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import CheckpointIO

from datamodules.atomic import remove_stale_temps, write_text_atomic
from datamodules.base import SpeechDataModule
from datamodules.locales import monitored_metric
from experiments.commands import TOOLS
from experiments.errors import report_user_error
from experiments.runs import (
    checkpoint_callbacks,
    default_loggers,
    is_launching_process,
    link_latest,
    resolve_run_dir,
    resume_checkpoint,
)
from experiments.slurm_signal import finish_for_requeue, in_slurm_batch_job
from lightning_modules.checkpoint_io import AtomicCheckpointIO, read_checkpoint

TRAINER_DEFAULTS = {
    # lhotse's duration samplers shard batches across ranks themselves.
    "use_distributed_sampler": False,
}


def interactive() -> bool:
    """True when a person watches stdout: a TTY, and not a SLURM batch job (progress bars off otherwise)."""
    return sys.stdout.isatty() and not in_slurm_batch_job()


def _tokenizer_dict(datamodule: SpeechDataModule) -> dict:
    return datamodule.tokenizer.to_dict()


class AtomicSaveConfig(SaveConfigCallback):
    """Writes the resolved ``config.yaml`` into the run dir atomically (never a 0-byte file on a full disk)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        write_text_atomic(Path(trainer.default_root_dir) / self.config_filename, text)


def checkpoint_io(trainer_config: dict, run_dir: Path | None) -> list:
    """``trainer.plugins`` plus :class:`AtomicCheckpointIO` unless the config brings its own CheckpointIO."""
    plugins = trainer_config.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, CheckpointIO) for p in plugins):
        return plugins
    checkpoints = run_dir / "checkpoints" if run_dir is not None else None

    def on_saved(path: Path) -> None:  # rank 0: `latest` follows a run once it has a checkpoint
        if checkpoints is not None and path.parent.resolve() == checkpoints.resolve():  # runs_dir may be relative
            link_latest(run_dir)

    return [*plugins, AtomicCheckpointIO(on_saved=on_saved)]


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
        from lightning_modules.tta import TTASettings

        parser.add_class_arguments(TTASettings, "tta", help="Test-time adaptation for validate/test (SUTA)")

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyper-parameters of ``--ckpt_path`` (weights only); a refused or corrupt file
        gets ``read_checkpoint``'s message naming it instead of a bare ``UnpicklingError``."""
        try:
            super()._parse_ckpt_path()
        except Exception:
            config = self.config[self.config.subcommand]
            trusted = config.get("weights_only") is False
            read_checkpoint(config.get("ckpt_path"), trusted=trusted)  # raises CheckpointLoadError
            if not trusted:
                raise

    def instantiate_trainer(self, **kwargs) -> Trainer:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        callbacks += self._get(self.config_init, "callbacks", default=None) or []
        callbacks += tta_callbacks(self._get(self.config_init, "tta"))
        self.resume_from = config.get("ckpt_path")
        if trainer_config.get("fast_dev_run"):
            trainer_config["plugins"] = checkpoint_io(trainer_config, None)
            return self._instantiate_trainer(trainer_config, callbacks)

        ckpt_path = config.get("ckpt_path")
        resume_last = str(ckpt_path) in ("last", "last_if_any")
        run_dir = resolve_run_dir(config.runs_dir, config.experiment, config.run_name, resume_last)
        self.resume_from = resume_checkpoint(run_dir, ckpt_path) if self.subcommand == "fit" else ckpt_path
        if is_launching_process():  # leftovers of a killed writer (nobody else writes here yet)
            for folder in (run_dir, run_dir / "checkpoints"):
                remove_stale_temps(folder)
        trainer_config["default_root_dir"] = str(run_dir)
        trainer_config["plugins"] = checkpoint_io(trainer_config, run_dir)
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = default_loggers(
                run_dir, config.experiment, run_tags(self.model, self.datamodule), config.wandb, config.wandb_project
            )
        user_callbacks = trainer_config.get("callbacks") or []
        callbacks += default_callbacks(user_callbacks + callbacks, with_logger=bool(trainer_config["logger"]))
        if trainer_config.get("enable_checkpointing", True) is not False and not any(
            isinstance(cb, ModelCheckpoint) for cb in user_callbacks
        ):
            callbacks += checkpoint_callbacks(
                run_dir, monitored_metric(self.datamodule), config.checkpoint_every_n_steps
            )
        return self._instantiate_trainer(trainer_config, callbacks)

    def fit(self, model: LightningModule, datamodule: SpeechDataModule | None = None,
            ckpt_path: str | None = None, **kwargs) -> None:
        """``Trainer.fit`` with ``--ckpt_path last`` / ``last_if_any`` resolved to the run's ``last.ckpt``."""
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=self.resume_from, **kwargs)

    @property
    def stopped_for_requeue(self) -> bool:
        """True when ``callbacks.SlurmRequeue`` stopped this fit to be requeued."""
        from callbacks import SlurmRequeue

        return any(isinstance(cb, SlurmRequeue) and cb.stopped_for_requeue for cb in self.trainer.callbacks)


    def before_fit(self) -> None:
        """Validate the starting model first when a ``ResultsTable(before=True)`` will report it.

        Not logged (loggers off for it): metrics.csv / W&B / summary.json and sweeps see only the fit's
        validations; the callback keeps the numbers (table, results.md, checkpoint)."""
        from callbacks import ResultsTable

        fresh = self.resume_from is None  # a resumed run has its "before" (in the checkpoint)
        if not fresh or not any(isinstance(cb, ResultsTable) and cb.before_enabled for cb in self.trainer.callbacks):
            return
        trainer, loop = self.trainer, self.trainer.validate_loop
        loggers, trainer.loggers = trainer.loggers, []
        # no_grad, not inference_mode: fit's validations update the same metric states
        inference_mode, loop.inference_mode = loop.inference_mode, False
        modes = {name: module.training for name, module in self.model.named_modules()}
        try:
            trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        finally:
            trainer.loggers, loop.inference_mode = loggers, inference_mode
        for name, module in self.model.named_modules():  # modules made during validation (metric states)
            module.training = modes.get(name, True)      # start fit in train mode, like the rest


def default_callbacks(present: list[Callback], with_logger: bool = True) -> list[Callback]:
    """Callbacks every run gets unless the config already has one of the same type."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    from callbacks import (
        AudioThroughput, BadInputReport, NonFiniteGuard, RandomState, ResultsTable, ResumeAtEpochEnd, RunSummary,
        SlurmRequeue, WandbAdaptationCurve, WandbLayerWeights, WandbValidationSamples,
    )

    have = {type(cb) for cb in present}
    wanted = [RunSummary, AudioThroughput, WandbValidationSamples, WandbLayerWeights, WandbAdaptationCurve,
              ResumeAtEpochEnd, RandomState, ResultsTable, BadInputReport,
              NonFiniteGuard]  # NonFiniteGuard last: it sees the gradients others synced
    if in_slurm_batch_job():
        wanted.append(SlurmRequeue)  # checkpoint + stop for a requeue on sbatch --signal=SIGUSR1@90
    added = [cls() for cls in wanted if cls not in have]
    if with_logger and LearningRateMonitor not in have:  # lr/<param group> every log_every_n_steps
        added.append(LearningRateMonitor(logging_interval="step"))
    return added


def tta_callbacks(settings: lightning_modules.tta.TTASettings) -> list[Callback]:
    """``[callbacks.TestTimeAdaptation(settings)]`` when ``--tta.method`` is set, else ``[]``."""
    from callbacks.tta import TestTimeAdaptation

    return [TestTimeAdaptation(settings)] if settings.enabled else []


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
        trainer_defaults={**TRAINER_DEFAULTS, "enable_progress_bar": interactive()},
        save_config_callback=AtomicSaveConfig,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        parser_kwargs={"default_env": False, "exit_on_error": exit_on_error},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: tools by name, everything else goes to LightningCLI.

    Bad input, unloadable checkpoints and impossible resumes end with a short message (exit 2);
    a fit stopped for a SLURM requeue: ``experiments.slurm_signal.finish_for_requeue``.
    """
    # Denormal floats (near-silent audio, decaying LSTM/CTC gradients) are ~5x slower on x86 CPUs;
    # flushing them to zero costs no accuracy at fp32 and is a no-op on GPU kernels.
    torch.set_flush_denormal(True)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in TOOLS:
            return int(importlib.import_module(TOOLS[args[0]]).main(args[1:]) or 0)
        cli = build_cli(None if argv is None else args)
    except Exception as err:
        finish_wandb_run(exit_code=1)
        code = report_user_error(err)
        if code is None:
            raise
        return code
    finish_wandb_run(exit_code=0)
    if cli.subcommand == "fit" and cli.stopped_for_requeue:
        return finish_for_requeue(cli.trainer.is_global_zero)
    return 0


def finish_wandb_run(exit_code: int) -> None:
    """Close this process's W&B run, if any (Lightning's WandbLogger leaves it open): its id is free for the
    next session of the same training (``resume="allow"``), and an offline run records how it ended."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


if __name__ == "__main__":
    sys.exit(main())
