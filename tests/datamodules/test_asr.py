"""ASRDataModule: batch contract, bad-input checks, tokenizer cache, augmentation, resume, CLI construction."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules import ASRDataModule, BadInputError, CharTokenizer, CommonVoiceCorpus, LibriSpeechCorpus
from datamodules.augment import WaveformAugmentation
from datamodules.batch import check_batch
from datamodules.dataset import SpeechDataset
from lightning_modules.backbones import ScratchEncoder
from tests.corpus_factory import make_commonvoice, make_librispeech, tone_speech

SPLITS = {"train-clean-100": 16, "dev-clean": 4}


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """A fresh LibriSpeech-layout corpus per test (tests damage it)."""
    return make_librispeech(tmp_path / "data", SPLITS)


def make_dm(root: Path, **kwargs) -> ASRDataModule:
    defaults = dict(
        train=LibriSpeechCorpus(root, ["train-clean-100"]), val=LibriSpeechCorpus(root, ["dev-clean"]),
        max_duration=2.0, num_buckets=3, num_workers=0, cache_dir=str(root / "cache"),
    )
    return ASRDataModule(**{**defaults, **kwargs})


def rewrite_transcript(root: Path, subset: str, uid: str, text: str) -> None:
    """Replace the transcript of utterance ``uid``."""
    for trans in (root / "LibriSpeech" / subset).rglob("*.trans.txt"):
        lines = trans.read_text().splitlines()
        if any(line.startswith(uid + " ") for line in lines):
            trans.write_text("\n".join(f"{uid} {text}" if line.startswith(uid + " ") else line for line in lines) + "\n")
            return
    raise KeyError(uid)


def first_uid(root: Path, subset: str) -> str:
    return sorted(p.stem for p in (root / "LibriSpeech" / subset).rglob("*.flac"))[0]


def flac_of(root: Path, uid: str) -> Path:
    return next((root / "LibriSpeech").rglob(f"{uid}.flac"))


# -- the batch contract --------------------------------------------------------------------------

def test_train_batches_follow_the_contract_and_match_the_files(corpus):
    dm = make_dm(corpus)
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        check_batch(batch, labels=True)
        assert batch["domain"].tolist() == [0] * len(batch["ids"])
        for row, uid in enumerate(batch["ids"]):
            n = int(batch["lengths"][row])
            wave, sr = sf.read(flac_of(corpus, uid), dtype="float32")
            assert sr == 16000 and n == len(wave)
            np.testing.assert_allclose(batch["audio"][row, :n].numpy(), wave, atol=1e-4)
            assert batch["audio"][row, n:].abs().sum() == 0
            text = batch["texts"][row]
            assert text == text.lower() and dm.tokenizer.decode(batch["targets"][row, : batch["target_lengths"][row]]) == text
            assert batch["audio_keys"][row].startswith(str(flac_of(corpus, uid)) + "|")
        seen += batch["ids"]
    assert sorted(seen) == sorted(c.id for c in dm.train_cuts())
    assert len(seen) == SPLITS["train-clean-100"]


def test_audio_keys_change_when_the_file_changes(corpus):
    dm = make_dm(corpus)
    cut = next(iter(dm.train_cuts()))
    before = SpeechDataset(labels=False)[dm.train_cuts().subset(cut_ids=[cut.id])]["audio_keys"][0]
    path, size, mtime, offset, duration = before.split("|")
    assert int(size) == flac_of(corpus, cut.id).stat().st_size and float(duration) == pytest.approx(cut.duration)
    sf.write(flac_of(corpus, cut.id), tone_speech("cat", seed=9), 16000)
    after = SpeechDataset(labels=False)[dm.train_cuts().subset(cut_ids=[cut.id])]["audio_keys"][0]
    assert after != before


def test_val_corpus_given_bare_is_named_after_the_domain(corpus):
    dm = make_dm(corpus, domain="target")
    assert dm.val_domains == ["target"] and dm.test_domains == []
    (loader,) = dm.val_dataloader()
    batches = list(loader)
    assert all(b["domain"].tolist() == [1] * len(b["ids"]) for b in batches)
    assert sum(len(b["ids"]) for b in batches) == SPLITS["dev-clean"]
    named = make_dm(corpus, val={"dev-clean": LibriSpeechCorpus(corpus, ["dev-clean"])}, test={"target": LibriSpeechCorpus(corpus, ["dev-clean"])})
    assert named.val_domains == ["dev-clean"] and named.test_domains == ["target"]
    assert next(iter(named.test_dataloader()[0]))["domain"][0] == 1


def test_labels_off_never_reads_the_transcript(corpus):
    class Exploding:
        def __getattr__(self, name):
            raise AssertionError(f"tokenizer.{name} used in labels-off mode")

    dm = make_dm(corpus, train_labels=False)
    cuts = dm.train_cuts()
    batch = SpeechDataset(Exploding(), labels=False)[cuts.subset(first=3)]
    check_batch(batch, labels=False)
    loader_batch = next(iter(dm.train_dataloader()))
    assert not {"targets", "target_lengths", "texts"} & set(loader_batch)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_covers_every_utterance_once_over_the_ranks(corpus, world_size):
    dm = make_dm(corpus, max_duration=1.0)  # several batches per rank
    per_rank = [[b["ids"] for b in dm.val_dataloader(rank=r, world_size=world_size)[0]] for r in range(world_size)]
    assert all(len(batches) >= 1 for batches in per_rank)  # no rank idles (Lightning would hang at the sync)
    ids = [i for batches in per_rank for b in batches for i in b]
    assert sorted(ids) == sorted(c.id for c in dm.eval_cuts("val", "source"))  # == single process, no duplicate
    assert len(ids) == SPLITS["dev-clean"]
    flac = flac_of(corpus, first_uid(corpus, "dev-clean"))
    predict = make_dm(corpus, predict=[str(flac), str(flac_of(corpus, first_uid(corpus, "train-clean-100")))])
    predicted = [i for r in range(world_size) for b in predict.predict_dataloader(r, world_size) for i in b["ids"]]
    assert len(predicted) == len(set(predicted)) == 2  # world_size 3: one rank predicts nothing, which is fine


def test_an_evaluation_set_smaller_than_the_world_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match=r"val/source has 4 utterance\(s\) for 5 ranks"):
        make_dm(corpus).val_dataloader(rank=0, world_size=5)


# -- bad input -----------------------------------------------------------------------------------

def test_oov_character_error_names_utterance_and_file(corpus):
    uid = first_uid(corpus, "dev-clean")
    rewrite_transcript(corpus, "dev-clean", uid, "THE CAT 7")
    dm = make_dm(corpus)
    with pytest.raises(BadInputError, match=rf"{uid}.*{uid}\.flac.*'7'"):
        dm.setup("fit")


def test_oov_character_skip_is_counted(corpus):
    uid = first_uid(corpus, "dev-clean")
    rewrite_transcript(corpus, "dev-clean", uid, "THE CAT 7")
    dm = make_dm(corpus, on_bad_input="skip")
    dm.setup("fit")
    assert dm.skipped["val/source"] == {"oov_character": 1}
    ids = [i for b in dm.val_dataloader()[0] for i in b["ids"]]
    assert uid not in ids and len(ids) == SPLITS["dev-clean"] - 1
    kept = dm.eval_cuts("val", "source")  # a lazily read filtered manifest, written once next to the source
    assert kept.is_lazy and len(kept) == SPLITS["dev-clean"] - 1
    assert len(list((corpus / "cache").glob("*.labels-*.jsonl.gz"))) == 1
    assert dm.train_cuts().is_lazy and len(dm.train_cuts()) == SPLITS["train-clean-100"]


def encoder_25fps():
    """Exact frame counts of a 25 frames/s encoder (the data layer's CTC length check uses them); the
    unpadded frontend (2 frames fewer than the default padded one), so speed 1.7 makes some clips too short."""
    return ScratchEncoder(n_mels=40, conv_channels=8, hidden=16, num_layers=1, subsampling=4, center=False,
                          conv_padding=False).output_lengths


def test_clip_too_short_for_its_ctc_label(corpus):
    uid = first_uid(corpus, "train-clean-100")
    rewrite_transcript(corpus, "train-clean-100", uid, "A " * 60 + "A")  # 121 chars on a < 1 s clip
    strict = make_dm(corpus)
    strict.output_lengths = encoder_25fps()
    with pytest.raises(BadInputError, match=rf"{uid}.*too_short_for_ctc.*needs 121"):
        strict.setup("fit")
    dm = make_dm(corpus, on_bad_input="skip")
    assert uid not in {c.id for c in dm.train_cuts()}  # no model attached yet: its speaking rate gives it away
    assert dm.skipped["train"] == {"implausible_speaking_rate": 1}
    dm.output_lengths = encoder_25fps()
    assert uid not in {c.id for c in dm.train_cuts()}  # re-checked with the encoder's frame counts
    assert dm.skipped["train"] == {"too_short_for_ctc": 1}


def test_speed_perturbation_tightens_the_ctc_length_check(corpus):
    dm = make_dm(corpus, on_bad_input="skip")
    dm.output_lengths = encoder_25fps()
    plain = len(dm.train_cuts())
    assert plain == SPLITS["train-clean-100"]
    fast = make_dm(corpus, on_bad_input="skip", augment=WaveformAugmentation(speed_factors=[1.7]))
    fast.output_lengths = encoder_25fps()
    assert 0 < len(fast.train_cuts()) < plain


def test_audio_decode_failure_names_the_file(corpus):
    dm = make_dm(corpus)
    cuts = dm.train_cuts().subset(first=3)
    bad = next(iter(cuts))
    flac_of(corpus, bad.id).write_bytes(b"fLaC" + b"\x00garbage" * 50)
    with pytest.raises(BadInputError, match=rf"{bad.id}\.flac: audio_decode_failed"):
        SpeechDataset(dm.tokenizer)[cuts]
    lenient = SpeechDataset(dm.tokenizer, on_bad_input="skip")
    batch = lenient[cuts]
    check_batch(batch, labels=True)
    assert bad.id not in batch["ids"] and len(batch["ids"]) == 2
    assert lenient.skipped == {"audio_decode_failed": 1}


# -- tokenizer -----------------------------------------------------------------------------------

def test_tokenizer_is_built_once_and_cached(corpus, monkeypatch):
    dm = make_dm(corpus)
    assert dm.vocab_size == dm.tokenizer.vocab_size and dm.tokenizer.blank_id == 0
    (cached,) = (corpus / "cache").glob("tokenizer-*.json")
    assert not list((corpus / "cache").glob(".tokenizer-*"))  # no temp file left behind

    def no_build(*args, **kwargs):
        raise AssertionError("tokenizer rebuilt despite the cache")

    monkeypatch.setattr(CharTokenizer, "build", no_build)
    again = make_dm(corpus)
    assert again.tokenizer.to_dict() == dm.tokenizer.to_dict()
    from_path = make_dm(corpus, train=None, tokenizer_path=str(cached))
    assert from_path.tokenizer.to_dict() == dm.tokenizer.to_dict()


def test_sentencepiece_tokenizer(corpus):
    dm = make_dm(corpus, tokenizer="sentencepiece", sentencepiece_vocab_size=40)
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, labels=True)
    assert type(dm.tokenizer).__name__ == "SentencePieceTokenizer"
    assert dm.tokenizer.decode(batch["targets"][0, : batch["target_lengths"][0]]) == batch["texts"][0]


# -- augmentation --------------------------------------------------------------------------------

def test_speed_and_noise_augment_training_batches_only(corpus, tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    sf.write(noise_dir / "hum.wav", 0.1 * np.random.default_rng(0).standard_normal(32000).astype("float32"), 16000)
    clean = make_dm(corpus, shuffle=False)
    fast = make_dm(corpus, shuffle=False, augment=WaveformAugmentation(speed_factors=[1.25]))
    noisy = make_dm(corpus, shuffle=False, augment=WaveformAugmentation(noise=str(noise_dir), noise_prob=1.0))
    gauss = make_dm(corpus, shuffle=False, augment=WaveformAugmentation(gaussian_noise=True, noise_prob=1.0, noise_snr=(5.0, 5.0)))
    assert not clean.augments_waveform and fast.augments_waveform and noisy.augments_waveform and gauss.augments_waveform
    ref = next(iter(clean.train_dataloader()))
    sped = next(iter(fast.train_dataloader()))
    assert sped["ids"] == ref["ids"]
    ratio = ref["lengths"].double() / sped["lengths"].double()
    assert torch.allclose(ratio, torch.full_like(ratio, 1.25), atol=0.01)
    for dm in (noisy, gauss):
        out = next(iter(dm.train_dataloader()))
        assert out["ids"] == ref["ids"] and torch.equal(out["lengths"], ref["lengths"])
        assert not torch.allclose(out["audio"], ref["audio"])
        assert torch.equal(out["targets"], ref["targets"])
    n = int(ref["lengths"][0])
    out = next(iter(gauss.train_dataloader()))
    snr = 10 * torch.log10(ref["audio"][0, :n].pow(2).mean() / (out["audio"][0, :n] - ref["audio"][0, :n]).pow(2).mean())
    assert abs(float(snr) - 5.0) < 0.5
    val_clean, val_noisy = next(iter(clean.val_dataloader()[0])), next(iter(noisy.val_dataloader()[0]))
    assert torch.equal(val_clean["audio"], val_noisy["audio"])


# -- predict -------------------------------------------------------------------------------------

def test_predict_from_audio_paths(corpus, tmp_path):
    cv = make_commonvoice(tmp_path / "cv", "en", {"train": 1}, sample_rate=48000)
    mp3 = next((cv / "en" / "clips").glob("*.mp3"))
    flac = flac_of(corpus, first_uid(corpus, "dev-clean"))
    dm = make_dm(corpus, predict=[str(flac), str(mp3)])
    batches = list(dm.predict_dataloader())
    check_batch(batches[0], labels=False)
    lengths = {i: int(n) for b in batches for i, n in zip(b["ids"], b["lengths"])}  # cut id = the path as given
    assert lengths[str(flac)] == sf.info(flac).frames
    assert abs(lengths[str(mp3)] - round(sf.info(mp3).duration * 16000)) <= 16  # resampled 48k -> 16k
    assert dm.notes["predict"] == {}  # any rate is expected of user files (resampled all the same)
    with pytest.raises(BadInputError, match="missing.flac"):
        list(make_dm(corpus, predict=[str(flac), str(tmp_path / "missing.flac")]).predict_dataloader())
    lenient = make_dm(corpus, predict=[str(flac), str(tmp_path / "missing.flac")], on_bad_input="skip")
    assert [i for b in lenient.predict_dataloader() for i in b["ids"]] == [str(flac)]
    assert lenient.skipped["predict"] == {"missing_file": 1}
    assert [str(e) for e in lenient.predict_errors] == [f"{tmp_path / 'missing.flac'}: missing_file: no such file"]


# -- construction from a config ------------------------------------------------------------------

def test_lightning_cli_style_construction(corpus, tmp_path):
    make_commonvoice(tmp_path / "cv", "en", {"dev": 3})

    def ls(subset):
        return {"class_path": "datamodules.corpora.LibriSpeechCorpus", "init_args": {"root": str(corpus), "subsets": [subset]}}

    cv_dev = {"class_path": "datamodules.corpora.CommonVoiceCorpus",
              "init_args": {"root": str(tmp_path / "cv"), "locale": "en", "split": "dev"}}
    parser = ArgumentParser()
    parser.add_class_arguments(ASRDataModule, "data")
    cfg = parser.parse_object({"data": {
        "train": ls("train-clean-100"), "val": {"source": ls("dev-clean"), "target": cv_dev},
        "augment": {"speed_factors": [0.9, 1.0, 1.1]}, "max_duration": 2.0, "num_workers": 0,
        "cache_dir": str(corpus / "cache"),
    }})
    dm = parser.instantiate(cfg).data
    assert isinstance(dm.train_corpus, LibriSpeechCorpus) and isinstance(dm.val_corpora["target"], CommonVoiceCorpus)
    assert dm.val_domains == ["source", "target"] and dm.augments_waveform
    bare = parser.instantiate(parser.parse_object({"data": {"train": ls("train-clean-100"), "val": ls("dev-clean")}})).data
    assert bare.val_domains == ["source"]


# -- mid-epoch resume through a real Trainer -----------------------------------------------------

class Recorder(pl.LightningModule):
    """Records the ids of every training batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, tuple(batch["ids"])))
        return (self.w * batch["audio"].mean() - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, tmp_path, ckpt_path=None, callbacks=()):
    model = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SLURM/num_workers hints
        trainer = pl.Trainer(
            max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
            callbacks=list(callbacks), default_root_dir=tmp_path, num_sanity_val_steps=0,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_resume_yields_exactly_the_remaining_batches(corpus, tmp_path):
    every_step = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    epoch_end = ModelCheckpoint(dirpath=tmp_path / "epochs", save_top_k=-1, filename="{epoch}")
    reference = fit(make_dm(corpus, max_duration=1.5), tmp_path, callbacks=[every_step, epoch_end])
    n = len([s for s in reference if s[0] == 0])  # batches per epoch
    assert n >= 4 and len(reference) > n and reference[n:] != reference[:n]
    # mid epoch 0, last batch of epoch 0 (Lightning moves on to epoch 1), mid epoch 1, epoch-end checkpoint
    cases = [(2, "steps/step=2.ckpt"), (n, f"steps/step={n}.ckpt"), (n + 2, f"steps/step={n + 2}.ckpt"),
             (n, "epochs/epoch=0.ckpt")]
    for done, ckpt in cases:
        resumed = fit(make_dm(corpus, max_duration=1.5), tmp_path, ckpt_path=tmp_path / ckpt)
        assert resumed == reference[done:], f"resume from {ckpt}"
