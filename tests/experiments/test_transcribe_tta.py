"""``--tta.*``: the same switches on ``speechxfer transcribe`` and ``speechxfer test`` (and a config fragment)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
import yaml
from lhotse import CutSet

from datamodules import errors as E
from datamodules.dataset import SpeechDataset
from datamodules.probe import audio_file_cut
from experiments.cli import build_cli, main
from lightning_modules import CTCModule, load_model
from lightning_modules.tta import TestTimeAdapter, TTASettings
from tests.cli_helpers import EXPERIMENTS, REPO, in_process_cli
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone
from tests.corpus_factory import tone_speech

pytestmark = pytest.mark.usefixtures("one_thread")
TTA_ARGS = ["--tta.method", "suta", "--tta.steps", "2", "--tta.lr", "0.003", "--tta.mcc_reweight", "false"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from tests.conftest import char_tokenizer

    torch.manual_seed(0)
    model = CTCModule(make_tiny_backbone(), char_tokenizer().to_dict(), dropout=0.0)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(char_tokenizer()))
    path = tmp_path_factory.mktemp("tta_ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_transcribe_adapts_each_file_and_reports_the_cost(ckpt, tmp_path, capsys):
    files = []
    for i, text in enumerate(["the big dog", "a red box"]):
        files.append(tmp_path / f"{i}.flac")
        sf.write(files[-1], tone_speech(text, shift=0.5, seed=i), 16000)
    assert main(["transcribe", "--ckpt", str(ckpt), *map(str, files), *TTA_ARGS]) == 0
    out = capsys.readouterr()
    lines = [line.split("\t", 1) for line in out.out.splitlines()]
    assert "tta: suta, 2 steps, params norm+frontend" in out.err and "2 utterances" in out.err

    model = load_model(ckpt)
    settings = TTASettings(method="suta", steps=2, lr=0.003, mcc_reweight=False)
    for (path, text), file in zip(lines, files):
        batch = SpeechDataset(labels=False)[CutSet.from_cuts([audio_file_cut(str(file), E.BadInputPolicy("error", "t"))])]
        log_probs, lengths = TestTimeAdapter(settings)(model, batch["audio"], batch["lengths"])
        assert (path, text) == (str(file), model.decode(log_probs, lengths)[0])


def test_the_tta_group_is_a_config_block_and_refused_for_fit(tmp_path):
    fragment = EXPERIMENTS / "tta" / "suta_demo.yaml"
    out = io.StringIO()
    with in_process_cli(cwd=tmp_path), redirect_stdout(out), pytest.raises(SystemExit):
        build_cli(["test", "--config", str(EXPERIMENTS / "quickstart.yaml"), "--config", str(fragment),
                   "--tta.steps", "3", "--print_config"])
    printed = yaml.safe_load(out.getvalue())["tta"]
    assert printed == {**yaml.safe_load(fragment.read_text())["tta"], "steps": 3, "optimizer": "adamw",
                       "mcc_reweight": True}
    with in_process_cli(cwd=REPO), pytest.raises(ValueError, match="not to fit"):
        build_cli(["fit", "--config", str(EXPERIMENTS / "quickstart.yaml"), *TTA_ARGS, "--trainer.fast_dev_run", "true"])
