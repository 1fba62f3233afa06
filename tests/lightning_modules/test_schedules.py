"""Schedule length over the unsized duration samplers: LR decay and the DANN lambda span the whole fit.

Lightning cannot size an epoch of a sampler without ``__len__`` (``estimated_stepping_batches`` is
``max_steps``, i.e. -1, for an epoch-bounded run); ``optim.total_optimizer_steps`` asks the datamodule.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl

from datamodules import ASRDataModule, CommonVoiceCorpus, DomainAdaptationDataModule, LibriSpeechCorpus
from lightning_modules import CTCModule, DANNCTC, ganin_lambda
from tests.conftest import QUIET, make_tiny_backbone
from tests.corpus_factory import make_commonvoice, make_librispeech

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("sched")
    return (make_librispeech(base / "ls", {"train-clean-100": 12, "dev-clean": 2}),
            make_commonvoice(base / "cv", "en", {"train": 6, "dev": 2}))


def source_dm(roots) -> ASRDataModule:
    ls, _ = roots
    return ASRDataModule(train=LibriSpeechCorpus(ls, ["train-clean-100"]), val=LibriSpeechCorpus(ls, ["dev-clean"]),
                         max_duration=1.5, num_buckets=3, num_workers=0, cache_dir=str(ls / "cache"))


def dann_dm(roots) -> DomainAdaptationDataModule:
    ls, cv = roots
    val = {"source": LibriSpeechCorpus(ls, ["dev-clean"]), "target": CommonVoiceCorpus(cv, "en", "dev")}
    return DomainAdaptationDataModule(LibriSpeechCorpus(ls, ["train-clean-100"]), CommonVoiceCorpus(cv, "en", "train"),
                                      val=val, max_duration=1.5, num_buckets=3, num_workers=0, on_bad_input="skip",
                                      cache_dir=str(ls / "cache"))


class Recorder(pl.Callback):
    """Per training step: the global step, the DANN lambda (if any) and the head group's lr."""

    def __init__(self) -> None:
        self.lambdas: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if hasattr(pl_module, "grl"):
            self.lambdas.append(pl_module.grl.lambd)
        self.lrs.append(trainer.optimizers[0].param_groups[-1]["lr"])


def fit(model, dm, **trainer_args) -> tuple[pl.Trainer, Recorder]:
    recorder = Recorder()
    trainer = pl.Trainer(limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                         callbacks=[recorder], **{**QUIET, **trainer_args})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers hints
        trainer.fit(model, datamodule=dm)
    return trainer, recorder


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("make_dm", [source_dm, dann_dm], ids=["asr", "dann"])
def test_batches_per_epoch_is_what_each_rank_loads(roots, make_dm, world_size):
    dm = make_dm(roots)
    dm.setup("fit")
    for rank in range(world_size):
        loaded = sum(1 for _ in dm.train_dataloader(rank=rank, world_size=world_size))
        assert dm.train_batches_per_epoch(rank=rank, world_size=world_size) == loaded > 0


def test_dann_lambda_climbs_over_an_epoch_bounded_run(roots):
    dm = dann_dm(roots)
    model = DANNCTC(make_tiny_backbone(), dm.tokenizer.to_dict(), lambda_max=0.5, domain_hidden=8, dropout=0.0,
                    decay="linear", warmup_steps=0)
    trainer, seen = fit(model, dm, max_epochs=3, max_steps=-1)
    per_epoch = dm.train_batches_per_epoch()
    steps = trainer.global_step
    assert trainer.estimated_stepping_batches == -1  # what Lightning alone would schedule over
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3 * per_epoch
    assert steps == pytest.approx(3 * per_epoch, abs=2)  # later epochs may differ by a batch
    assert seen.lambdas[0] == 0.0
    assert seen.lambdas[-1] == pytest.approx(0.5 * ganin_lambda(min((steps - 1) / (3 * per_epoch), 1.0)), rel=1e-6)
    assert seen.lambdas[-1] > 0.4  # was 0 for the whole run when the total was unknown
    assert seen.lrs[-1] < 0.2 * seen.lrs[0]  # linear decay reached the end of the run


def test_max_steps_caps_the_schedule_below_the_epochs(roots):
    dm = source_dm(roots)
    model = CTCModule(make_tiny_backbone(), dm.tokenizer.to_dict(), dropout=0.0, decay="linear")
    trainer, _ = fit(model, dm, max_epochs=50, max_steps=5)
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 5


def test_unknown_length_is_said_not_silently_ignored(roots):
    dm = dann_dm(roots)
    model = DANNCTC(make_tiny_backbone(), dm.tokenizer.to_dict(), domain_hidden=8, decay="constant")
    with pytest.raises(ValueError, match="lambda schedule needs the number of training steps"):
        fit(model, dm, max_epochs=-1, max_steps=-1, max_time={"seconds": 30})
