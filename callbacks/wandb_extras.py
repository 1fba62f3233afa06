"""Weights & Biases extras: validation transcripts with audio, featurizer layer weights as a bar chart,
the few-shot adaptation curve as a line plot.

Why the audio is logged twice (wandb 0.31): a ``wandb.Table`` logged to a run is stored as a ``run_table``
*artifact* (where its ``wandb.Audio`` cells are real files, playable in the W&B UI once the artifact is
uploaded) plus a plain ``files/media/table/...table.json`` copy written by ``Table.bind_to_run`` from the
raw rows, in which a media cell is only its class name: ``"Audio"``. Offline, the artifact waits in the
W&B staging folder outside the run directory (``~/.local/share/wandb/artifacts/staging``), so the run
directory held no audio at all. ``WandbValidationSamples`` therefore also logs the clips as a media list
(``<key>_audio``: ``files/media/audio/*.wav`` inside the run directory, in the run history) and gives the
table an ``audio_file`` column with each clip's path relative to ``files/``.

Both callbacks act only when a ``WandbLogger`` is attached, only on global rank 0 and never during the
sanity check; without a ``WandbLogger`` they do nothing (one debug log line). Metrics such as the DANN
λ (``train/lambda``) or per-layer weights (``layer_weights/<layer>``) are logged by the modules
themselves and reach W&B through the logger like every other metric.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from datamodules.base import eval_domain_name, speech_datamodule
from datamodules.batch import SAMPLE_RATE
from datamodules.episodic import FEWSHOT_METRIC

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["domain", "id", "audio", "audio_file", "reference", "hypothesis"]


def find_wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    """The first ``WandbLogger`` among ``trainer.loggers``, else None."""
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


class _WandbOnly(Callback):
    """Shared gate: the WandbLogger to use now, or None (logs once at debug level why not)."""

    def __init__(self) -> None:
        self._said_noop = False

    def _logger(self, trainer: pl.Trainer) -> WandbLogger | None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return None
        logger = find_wandb_logger(trainer)
        if logger is None and not self._said_noop:
            log.debug("%s: no WandbLogger attached; doing nothing", type(self).__name__)
            self._said_noop = True
        return logger


class WandbValidationSamples(_WandbOnly):
    """Each validation, a ``wandb.Table`` (domain, id, audio, audio_file, reference, hypothesis) per run.

    Takes the first ``num_samples`` labelled utterances of every val dataloader (first batch(es)),
    transcribes them with ``pl_module.transcribe(audio (B, T), lengths (B,)) -> list[str]`` and logs,
    at the current global step, the clips under ``<key>_audio`` (WAV files in the run's ``files/media/audio``)
    and the table under ``key`` (``audio_file``: a clip's path relative to the run's ``files/``; see the
    module docstring). Audio is trimmed to its valid length.

    The audio's rate is the datamodule's ``sample_rate`` (``SAMPLE_RATE`` without a datamodule).

    Args:
        num_samples: utterances per val dataloader.
        key: W&B key of the table.
    """

    def __init__(self, num_samples: int = 4, key: str = "val/samples") -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"WandbValidationSamples: num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.key = num_samples, key
        self._rows: list[list[Any]] = []
        self._taken: dict[int, int] = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows, self._taken = [], {}

    @torch.no_grad()
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        need = self.num_samples - self._taken.get(dataloader_idx, 0)
        if need <= 0 or not isinstance(batch, dict) or "texts" not in batch or self._logger(trainer) is None:
            return
        import wandb

        n = min(need, len(batch["texts"]))
        audio, lengths = batch["audio"][:n], batch["lengths"][:n]
        hypotheses = pl_module.transcribe(audio, lengths)
        datamodule = speech_datamodule(trainer)
        rate = datamodule.sample_rate if datamodule is not None else SAMPLE_RATE
        domain = eval_domain_name(trainer, "val", dataloader_idx)
        ids = batch.get("ids") or [f"{domain}-{batch_idx}-{i}" for i in range(n)]
        for i in range(n):
            wave = audio[i, : int(lengths[i])].float().cpu().numpy()
            self._rows.append([domain, ids[i], wandb.Audio(wave, sample_rate=rate), batch["texts"][i],
                               hypotheses[i]])
        self._taken[dataloader_idx] = self._taken.get(dataloader_idx, 0) + n

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is not None and self._rows:
            clips = [row[2] for row in self._rows]
            logger.log_metrics({f"{self.key}_audio": clips}, step=trainer.global_step)  # binds: files/media/audio
            files = [clip.to_json(logger.experiment)["path"] for clip in clips]
            rows = [[*row[:3], path, *row[3:]] for row, path in zip(self._rows, files)]
            logger.log_table(self.key, columns=SAMPLE_COLUMNS, data=rows, step=trainer.global_step)
        self._rows = []


def featurizer_weights(pl_module: pl.LightningModule) -> torch.Tensor | None:
    """(L,) softmax layer weights of ``pl_module.featurizer`` (``layer_weights()`` or a callable
    ``weights()``), or None when the featurizer has no learnable layer weights."""
    featurizer = getattr(pl_module, "featurizer", None)
    for name in ("layer_weights", "weights"):
        fn = getattr(featurizer, name, None)
        if callable(fn):  # WeightedLayerSum.weights is the raw Parameter: not callable
            return fn().detach().float().cpu()
    return None


class WandbLayerWeights(_WandbOnly):
    """At every training-epoch end, the featurizer's softmax layer weights as a W&B bar chart.

    Bars are labelled by backbone layer index (``pl_module.layers`` when present). Per-layer scalars
    ``layer_weights/<layer>`` are logged by the module itself. No-op for featurizers without weights.
    """

    def __init__(self, key: str = "layer_weights/chart") -> None:
        super().__init__()
        self.key = key

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        weights = featurizer_weights(pl_module) if logger is not None else None
        if weights is None:
            return
        import wandb

        labels = list(getattr(pl_module, "layers", None) or range(len(weights)))
        table = wandb.Table(columns=["layer", "weight"],
                            data=[[str(layer), float(w)] for layer, w in zip(labels, weights.tolist())])
        chart = wandb.plot.bar(table, "layer", "weight", title="featurizer layer weights")
        logger.log_metrics({self.key: chart}, step=trainer.global_step)


class WandbAdaptationCurve(_WandbOnly):
    """At the end of a few-shot test (``test/fewshot/k<k>/{wer,cer}``), the WER vs k curve as a W&B line plot.

    The table ``<key>`` (columns k, wer, cer) lets W&B overlay the curves of several runs (methods).
    """

    def __init__(self, key: str = "test/fewshot/curve") -> None:
        super().__init__()
        self.key = key

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        points: dict[float, dict[str, float]] = {}
        for name, value in trainer.callback_metrics.items():
            if (match := FEWSHOT_METRIC.match(name)) is not None:
                points.setdefault(float(match.group(1)), {})[match.group(2)] = float(value)
        if logger is None or not points:
            return
        import wandb

        table = wandb.Table(columns=["k", "wer", "cer"],
                            data=[[k, v.get("wer"), v.get("cer")] for k, v in sorted(points.items())])
        chart = wandb.plot.line(table, "k", "wer", title="query WER vs support shots (few-shot test)")
        logger.experiment.log({self.key: chart, f"{self.key}_table": table})
