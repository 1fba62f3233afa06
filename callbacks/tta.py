"""``TestTimeAdaptation``: SUTA-style test-time adaptation for ``speechxfer validate|test`` (any checkpoint).

The CLI adds it from the ``--tta.*`` group (``lightning_modules.tta.TTASettings``)::

    speechxfer test --config experiments/quickstart.yaml --ckpt_path runs/quickstart/latest/checkpoints/last.ckpt \\
        --tta.method suta --tta.steps 10 --tta.lr 2e-5

or from a config block (``tta: {method: suta, steps: 10, lr: 2e-5}``). It attaches a
``TestTimeAdapter`` to the module (``CTCModule.eval_forward`` then adapts per utterance group, decodes,
restores) and, at the end of the epoch, logs the cost summed over ranks:

    <stage>/tta/extra_s_per_audio_s   adaptation seconds (all ranks) / audio seconds (all ranks)
    <stage>/tta/audio_s, <stage>/tta/utterances
    <stage>/tta/objective_before, <stage>/tta/objective_after   mean SUTA loss before the first / after the last step

The same totals (+ the settings) are ``summary_entries`` -> ``summary.json``'s ``"tta"`` entry of the
test run (``RunSummary.on_test_end``).

Not for ``fit`` (validation during training stays unadapted: the error says so). Under DDP each rank
adapts on its own utterances; with ``utterances: 1`` the transcripts do not depend on the sharding.
"""

from __future__ import annotations

import dataclasses

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_modules.tta import TestTimeAdapter, TTASettings


class TestTimeAdaptation(Callback):
    """Adapt the model to each evaluation utterance (group) with ``settings``; log the cost."""

    def __init__(self, settings: TTASettings) -> None:
        if not settings.enabled:
            raise ValueError("TestTimeAdaptation: settings.method is 'none'")
        self.settings = settings
        self.adapter: TestTimeAdapter | None = None
        self.totals: dict[str, float] = {}  # the last epoch's cost over all ranks (as logged)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            raise ValueError("test-time adaptation (--tta.method) applies to validate/test/predict, not to fit "
                             "(training-time validation stays unadapted); run `speechxfer test ... --tta.method suta`")
        self.adapter = TestTimeAdapter(self.settings)
        pl_module.test_time_adaptation = self.adapter

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.test_time_adaptation = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        stats = self.adapter.stats
        local = torch.tensor([stats.adapt_seconds, stats.audio_seconds, stats.utterances, stats.groups,
                              stats.objective_before, stats.objective_after], dtype=torch.float64,
                             device=pl_module.device)
        seconds, audio, utterances, groups, before, after = trainer.strategy.reduce(local, reduce_op="sum").tolist()
        values = {"extra_s_per_audio_s": seconds / audio if audio else 0.0, "audio_s": audio, "adapt_s": seconds,
                  "utterances": utterances, "objective_before": before / max(groups, 1),
                  "objective_after": after / max(groups, 1)}
        self.totals = values
        for name, value in values.items():
            pl_module.log(f"{stage}/tta/{name}", value, on_step=False, on_epoch=True, sync_dist=False)

    def summary_entries(self, trainer: pl.Trainer) -> dict:
        """``{"tta": {"settings": {...}, "extra_s_per_audio_s", "adapt_s", "audio_s", "utterances", ...}}``
        for ``summary.json`` (the totals of the last evaluation epoch, all ranks)."""
        return {"tta": {"settings": dataclasses.asdict(self.settings), **self.totals}}
