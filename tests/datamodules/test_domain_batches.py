"""DomainAdaptationDataModule: paired batches, unlabelled target training data, DDP ranks, resume."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules import (ASRDataModule, BadInputError, CharTokenizer, CommonVoiceCorpus, DomainAdaptationDataModule,
                         LibriSpeechCorpus)
from datamodules.batch import check_batch
from datamodules.dataset import cut_text
from tests.corpus_factory import CV_COLUMNS, make_commonvoice, make_librispeech, write_tsv

POISON = "Quiz 42 wøk"  # no q, z, w, k, digits or ø in the source text: OOV under oov="error"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("da")
    source = make_librispeech(base / "ls", {"train-clean-100": 16, "dev-clean": 3})
    target = make_commonvoice(base / "cv", "en", {"train": 6, "dev": 3})
    tsv = target / "en" / "train.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    write_tsv(tsv, [r[:2] + [POISON] + r[3:] for r in rows])  # poison every target TRAINING transcript
    assert len(rows[0]) == len(CV_COLUMNS)
    return source, target


def settings(root: Path) -> dict:
    return dict(max_duration=1.5, num_buckets=3, num_workers=0, cache_dir=str(root / "cache"))


def make_da(roots, target_labels: bool = False, **kwargs) -> DomainAdaptationDataModule:
    ls, cv = roots
    val = {"source": LibriSpeechCorpus(ls, ["dev-clean"]), "target": CommonVoiceCorpus(cv, "en", "dev")}
    return DomainAdaptationDataModule(LibriSpeechCorpus(ls, ["train-clean-100"]), CommonVoiceCorpus(cv, "en", "train"),
                                      target_labels=target_labels, val=val, **settings(ls), **kwargs)


def source_only(roots) -> ASRDataModule:
    """The source side alone, same settings: what the paired loader's source half must equal."""
    ls, _ = roots
    return ASRDataModule(train=LibriSpeechCorpus(ls, ["train-clean-100"]), **settings(ls))


def ids(loader) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    return [(tuple(b["source"]["ids"]), tuple(b["target"]["ids"])) for b in loader]


def test_poisoned_target_transcripts_never_reach_the_batches(roots):
    dm = make_da(roots)
    dm.setup("fit")
    source_batches = [tuple(b["ids"]) for b in source_only(roots).train_dataloader()]
    target_ids = {c.id for c in dm.target_train_cuts()}
    assert all(cut_text(c) == POISON for c in dm.target_train_cuts())
    batches = list(dm.train_dataloader())
    assert [tuple(b["source"]["ids"]) for b in batches] == source_batches  # epoch = one source epoch
    seen_target = []
    for b in batches:
        check_batch(b["source"], labels=True)
        check_batch(b["target"], labels=False)
        assert b["source"]["domain"].eq(0).all() and b["target"]["domain"].eq(1).all()
        seen_target += b["target"]["ids"]
    assert set(seen_target) == target_ids and len(seen_target) > len(target_ids)  # the target cycles
    assert not {"q", "z", "4", "ø"} & set(dm.tokenizer.tokens)
    source_texts = [cut_text(c) for c in dm.train_cuts()]
    assert dm.tokenizer.to_dict() == CharTokenizer.build(source_texts, dm.normalizer).to_dict()
    assert dm.describe() == {"source": "LibriSpeech train-clean-100", "target": "CommonVoice en/train (unlabelled)"}
    assert dm.labelled_target_minutes == 0.0


def test_the_poison_is_real_when_target_labels_are_declared(roots):
    with pytest.raises(BadInputError, match="oov_character"):
        make_da(roots, target_labels=True).setup("fit")


def test_validation_covers_both_domains_with_labels(roots):
    dm = make_da(roots)
    dm.setup("validate")
    assert dm.val_domains == ["source", "target"]
    source_val, target_val = dm.val_dataloader()
    for loader, domain in ((source_val, 0), (target_val, 1)):
        batches = list(loader)
        assert sum(len(b["ids"]) for b in batches) == 3
        for b in batches:
            check_batch(b, labels=True)
            assert b["domain"].eq(domain).all()


@pytest.mark.parametrize("world_size", [1, 2])
def test_ranks_pair_equal_numbers_of_batches_on_distinct_source_utterances(roots, world_size):
    dm = make_da(roots)
    per_rank = [ids(dm.train_dataloader(rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) > 0
    source = [i for p in per_rank for s, _ in p for i in s]
    assert len(source) == len(set(source)) >= 16 - (world_size - 1)
    first_target = [set(t) for p in per_rank for _, t in p[:1]]
    assert world_size == 1 or not first_target[0] & first_target[1]


def test_fast_forward_resumes_source_and_target_exactly(roots):
    reference_loader = make_da(roots).train_dataloader()
    reference_loader.sampler.set_epoch(1)
    reference = ids(reference_loader)
    assert len(reference) >= 5
    for k in (1, 4):
        dm = make_da(roots)
        dm.load_state_dict({"train_sampler": {"epoch": 1, "batches": k, "world_size": 1, "seed": 0}})
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)  # Lightning re-sets the same epoch after restoring
        assert ids(loader) == reference[k:]


def test_resume_rejects_a_different_world_size(roots):
    dm = make_da(roots)
    dm.load_state_dict({"train_sampler": {"epoch": 0, "batches": 1, "world_size": 2, "seed": 0}})
    with pytest.raises(ValueError, match="world_size=2"):
        dm.train_dataloader(rank=0, world_size=1)


class PairRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        assert "targets" not in batch["target"]
        self.seen.append((tuple(batch["source"]["ids"]), tuple(batch["target"]["ids"])))
        return (self.w * (batch["source"]["audio"].mean() + batch["target"]["audio"].mean()) - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, tmp_path, ckpt_path=None, callbacks=()):
    model = PairRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SLURM/num_workers hints
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=list(callbacks), default_root_dir=tmp_path)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_trainer_epochs_reshuffle_and_resume(roots, tmp_path):
    every_step = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    epoch_end = ModelCheckpoint(dirpath=tmp_path / "epochs", save_top_k=-1, filename="{epoch}")
    reference = fit(make_da(roots), tmp_path, callbacks=[every_step, epoch_end])
    manual = make_da(roots).train_dataloader()
    manual.sampler.set_epoch(1)
    epoch1 = ids(manual)
    n = len(reference) - len(epoch1)
    assert reference[n:] == epoch1 and reference[:n] != epoch1
    for done, ckpt in [(3, "steps/step=3.ckpt"), (n, f"steps/step={n}.ckpt"), (n, "epochs/epoch=0.ckpt")]:
        resumed = fit(make_da(roots), tmp_path, ckpt_path=tmp_path / ckpt)
        assert resumed == reference[done:], f"resume from {ckpt}"


def test_cli_style_construction(roots):
    ls, cv = roots
    lib = {"class_path": "datamodules.corpora.LibriSpeechCorpus", "init_args": {"root": str(ls), "subsets": ["train-clean-100"]}}
    cvd = {"class_path": "datamodules.corpora.CommonVoiceCorpus", "init_args": {"root": str(cv), "locale": "en", "split": "dev"}}
    parser = ArgumentParser()
    parser.add_class_arguments(DomainAdaptationDataModule, "data")
    cfg = parser.parse_object({"data": {"source_train": lib, "target_train": cvd, "val": {"target": cvd},
                                        "num_workers": 0, "cache_dir": str(ls / "cache")}})
    da = parser.instantiate(cfg).data
    assert isinstance(da.train_corpus, LibriSpeechCorpus) and isinstance(da.target_train_corpus, CommonVoiceCorpus)
    assert da.val_domains == ["target"] and da.num_workers == 0
    assert da.target_labels is False
