"""``speechxfer transcribe --decoder beam ...``: the decoding flags reach the model's decode."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch

from datamodules.lexicon import build_lexicon, write_lexicon
from experiments.cli import main
from lightning_modules import CTCModule
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone
from tests.corpus_factory import WORDS, tone_speech

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint (random head: transcripts depend on the audio), 4 audio files, a lexicon."""
    tmp = tmp_path_factory.mktemp("transcribe_decoding")
    tok = char_tokenizer()
    pl.seed_everything(0)
    model = CTCModule(make_tiny_backbone(), tok.to_dict())
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(tok))
    generator = torch.Generator().manual_seed(0)
    for param in model.head.parameters():
        param.data = torch.randn(param.shape, generator=generator)
    trainer.save_checkpoint(tmp / "model.ckpt")
    for i, text in enumerate(["the cat", "a red box", "big dog ran", "hot sun"]):
        sf.write(tmp / f"clip{i}.wav", tone_speech(text, seed=i), 16000)
    write_lexicon(build_lexicon(WORDS, tok), tmp / "lexicon.txt")
    return tmp


def transcripts(args: list[str], capsys) -> list[str]:
    assert main(["transcribe", *args]) == 0
    return [line.split("\t")[1] for line in capsys.readouterr().out.splitlines() if "\t" in line]


def test_beam_flags_reach_the_decoder(setup, capsys):
    files = [str(setup / f"clip{i}.wav") for i in range(4)]
    ckpt = ["--ckpt", str(setup / "model.ckpt"), "--device", "cpu"]
    greedy = transcripts([*ckpt, *files], capsys)
    assert len(greedy) == 4 and any(greedy)
    assert transcripts([*ckpt, "--decoder", "beam", "--beam-size", "1", *files], capsys) == greedy
    constrained = transcripts([*ckpt, "--decoder", "beam", "--beam-size", "8", "--lexicon", str(setup / "lexicon.txt"),
                               *files], capsys)
    assert len(constrained) == 4 and all(set(t.split()) <= set(WORDS) for t in constrained)
    assert constrained != greedy
