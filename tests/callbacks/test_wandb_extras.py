"""W&B validation samples can be listened to from the offline run directory (issue 11, item 5b).

wandb 0.31 writes a table logged to a run as a ``run_table`` artifact (staged outside the run dir) plus a
``files/media/table`` JSON whose media cells are the literal string ``"Audio"``; the callback now also logs
the clips into ``files/media/audio`` and references them from the table's ``audio_file`` column."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import soundfile as sf
from pytorch_lightning.loggers import WandbLogger

from callbacks import WandbValidationSamples
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    from lightning_modules.finetune import FineTuneCTC

    save_dir = tmp_path_factory.mktemp("wandb_samples")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        mp.setenv(var, str(save_dir / sub))
    pl.seed_everything(0, verbose=False)
    dm = TinyDataModule(n_train=4, batch_size=2, n_val=3, val_domains=("source", "target"))
    module = FineTuneCTC(make_tiny_backbone(), char_tokenizer().to_dict(), dropout=0.0)
    logger = WandbLogger(save_dir=str(save_dir), offline=True, project="speechxfer-test")
    trainer = pl.Trainer(callbacks=[WandbValidationSamples(num_samples=2)], max_steps=2, num_sanity_val_steps=0,
                         **{**QUIET, "logger": logger})
    try:
        trainer.fit(module, datamodule=dm)
    finally:
        logger.experiment.finish()
        mp.undo()
    (run,) = (save_dir / "wandb").glob("offline-run-*")
    return run, dm


def test_the_offline_run_holds_the_audio_and_the_table_references_it(offline_run):
    run, dm = offline_run
    (table_file,) = (run / "files/media/table/val").glob("samples_*.table.json")
    table = json.loads(table_file.read_text())
    col = table["columns"].index("audio_file")
    paths = [row[col] for row in table["data"]]
    assert len(paths) == 4 and len(set(paths)) == 4
    expected = sorted(int(n) for b in dm.val_batches for n in b[0]["lengths"][:2])
    frames = []
    for path in paths:
        wav = run / "files" / path
        assert wav.is_file() and wav.suffix == ".wav" and path.startswith("media/audio/")
        info = sf.info(str(wav))
        assert info.samplerate == 16000
        frames.append(info.frames)
    assert sorted(frames) == expected  # each clip, trimmed to its valid length
