"""W&B extras (offline runs on disk) and the audio-throughput callback (fixed clock)."""

from __future__ import annotations

import json
import logging

import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from pytorch_lightning.loggers import Logger, WandbLogger

from callbacks import AudioThroughput, WandbLayerWeights, WandbValidationSamples
from callbacks.throughput import batch_audio
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone


# ---------------------------------------------------------------------- throughput
class ListLogger(Logger):
    """Keeps every ``log_metrics`` call in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict]] = []

    name, version = "list", 0

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def values(self, key: str) -> list[float]:
        return [m[key] for _, m in self.records if key in m]


class ConstantModule(pl.LightningModule):
    """One scalar parameter; the loss ignores the batch (only the callback reads it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return (self.w ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ManualClock(pl.Callback):
    """A clock that only moves when told: 0.25 s per training batch, 10 s per validation batch.

    List it before ``AudioThroughput`` so a batch's time has passed when the throughput reads it.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *args):
        self.now += 0.25

    def on_validation_batch_end(self, *args, **kwargs):
        self.now += 10.0


def test_batch_audio_counts_plain_and_domain_batches():
    plain = {"lengths": torch.tensor([16000, 8000])}
    assert batch_audio(plain)[0].item() == 24000 and batch_audio(plain)[1] == 2
    dann = {"source": plain, "target": {"lengths": torch.tensor([4000])}}
    assert batch_audio(dann)[0].item() == 28000 and batch_audio(dann)[1] == 3
    with pytest.raises(ValueError, match="no 'lengths'"):
        batch_audio({"audio": torch.zeros(1, 4)})


@pytest.mark.parametrize("accumulate, every, max_steps, validate", [
    (1, 2, 4, False), (2, 1, 2, False), (1, 2, 4, True),
])
@pytest.mark.parametrize("dann", [False, True])
def test_audio_throughput_equals_audio_seconds_over_elapsed(accumulate, every, max_steps, validate, dann):
    """Each logging interval covers 2 batches = 0.5 s of training; validation time (10 s) is excluded."""
    dm = TinyDataModule(n_train=8, batch_size=2, dann=dann)
    per_batch = [batch_audio(b) for b in dm.train_batches]  # 4 batches
    expected_audio = [(per_batch[i][0] + per_batch[i + 1][0]).item() / 16000 / 0.5 for i in (0, 2)]
    expected_utts = [(per_batch[i][1] + per_batch[i + 1][1]) / 0.5 for i in (0, 2)]
    clock, callback, logger = ManualClock(), AudioThroughput(), ListLogger()
    callback.clock = clock
    module = ConstantModule()
    val = {}
    if validate:  # a validation run between the two logging intervals
        module.validation_step = lambda batch, batch_idx: None
        val = {"val_dataloaders": TinyDataModule(n_train=2, n_val=2).val_dataloader()}
    trainer = pl.Trainer(callbacks=[clock, callback], max_steps=max_steps, log_every_n_steps=every,
                         accumulate_grad_batches=accumulate, val_check_interval=2 if validate else None,
                         num_sanity_val_steps=0, **{**QUIET, "logger": logger})
    trainer.fit(module, dm.train_dataloader(), **val)
    assert clock.now == pytest.approx(1.0 + (20.0 if validate else 0.0))  # val after batches 2 and 4
    assert logger.values("train/audio_sec_per_sec") == pytest.approx(expected_audio)
    assert logger.values("train/samples_per_sec") == pytest.approx(expected_utts)
    assert 1.0 < expected_audio[0] < 20.0  # tone speech: ~0.2-1 s per utterance, 2 utterances per batch


# ---------------------------------------------------------------------- W&B (offline)
@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """One short offline fit with both W&B callbacks; returns the offline run directory."""
    from lightning_modules.finetune import FineTuneCTC

    save_dir = tmp_path_factory.mktemp("wandb_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        mp.setenv(var, str(save_dir / sub))  # artifact staging (table media) stays in tmp
    pl.seed_everything(0, verbose=False)
    dm = TinyDataModule(n_train=8, batch_size=4, n_val=3, val_domains=("source", "target"))
    module = FineTuneCTC(make_tiny_backbone(), char_tokenizer().to_dict(), featurizer="weighted", dropout=0.0)
    logger = WandbLogger(save_dir=str(save_dir), offline=True, project="speechxfer-test")
    trainer = pl.Trainer(callbacks=[WandbValidationSamples(num_samples=2), WandbLayerWeights()], max_steps=2,
                         num_sanity_val_steps=0, **{**QUIET, "logger": logger})
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        logger.experiment.finish()
        mp.undo()
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return {"dir": runs[0], "dm": dm, "staging": save_dir / "data" / "artifacts" / "staging"}


def test_validation_samples_table_written(wandb_run):
    tables = list((wandb_run["dir"] / "files" / "media" / "table" / "val").glob("samples_*.table.json"))
    assert len(tables) == 1, tables  # one validation (end of the single epoch)
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["domain", "id", "audio", "audio_file", "reference", "hypothesis"]
    rows = table["data"]
    assert [r[0] for r in rows] == ["source", "source", "target", "target"]  # 2 per val dataloader
    val_texts = [b[0]["texts"][:2] for b in wandb_run["dm"].val_batches]
    assert [r[4] for r in rows] == val_texts[0] + val_texts[1]
    assert [r[1] for r in rows] == [i for b in wandb_run["dm"].val_batches for i in b[0]["ids"][:2]]
    assert all(isinstance(r[5], str) for r in rows)


def test_validation_samples_audio_goes_to_the_run_table_artifact(wandb_run):
    """W&B stores tables with media as a ``run_table`` artifact: its table references 4 WAV clips."""
    staged = sorted(wandb_run["staging"].iterdir())
    tables = {p.read_text() for p in staged if p.read_bytes()[:1] == b"{"}  # wandb stages some twice
    columns = ["domain", "id", "audio", "audio_file", "reference", "hypothesis"]
    samples = [t for t in map(json.loads, tables) if t.get("columns") == columns]
    assert len(samples) == 1
    audio_cells = [row[2] for row in samples[0]["data"]]
    assert [c["_type"] for c in audio_cells] == ["audio-file"] * 4
    assert len({c["path"] for c in audio_cells}) == 4 and all(c["path"].endswith(".wav") for c in audio_cells)
    waves = [sf.info(str(p)) for p in staged if p.read_bytes()[:4] == b"RIFF"]
    assert len(waves) == 4 and {w.samplerate for w in waves} == {16000}
    refs = [b[0] for b in wandb_run["dm"].val_batches]
    expected_s = sorted(int(n) for b in refs for n in b["lengths"][:2])
    assert sorted(w.frames for w in waves) == expected_s  # trimmed to the valid length, no padding


def test_layer_weights_bar_chart_written(wandb_run):
    tables = list((wandb_run["dir"] / "files" / "media" / "table").rglob("chart_table_*.table.json"))
    assert len(tables) == 1, tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["layer", "weight"]
    assert [r[0] for r in table["data"]] == ["0", "1"]  # tiny backbone: 2 layers, all used
    assert sum(r[1] for r in table["data"]) == pytest.approx(1.0)


def test_wandb_callbacks_are_noops_without_wandb_logger(caplog):
    module = ConstantModule()
    module.transcribe = lambda *a: pytest.fail("transcribe must not run without a WandbLogger")
    module.validation_step = lambda batch, batch_idx: None
    dm = TinyDataModule(n_train=4, batch_size=2, n_val=2)
    callbacks = [WandbValidationSamples(), WandbLayerWeights()]
    with caplog.at_level(logging.DEBUG, logger="callbacks.wandb_extras"):
        pl.Trainer(callbacks=callbacks, max_steps=4, max_epochs=2, num_sanity_val_steps=0, **QUIET).fit(
            module, dm.train_dataloader(), dm.val_dataloader())
    messages = [r.getMessage() for r in caplog.records if r.name == "callbacks.wandb_extras"]
    assert messages == [
        "WandbValidationSamples: no WandbLogger attached; doing nothing",
        "WandbLayerWeights: no WandbLogger attached; doing nothing",
    ]
