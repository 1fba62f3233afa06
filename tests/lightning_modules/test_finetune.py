"""FineTuneCTC(reuse_head=True): the whole source model (backbone, featurizer, head) is the starting point."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules.text import CharTokenizer, load_tokenizer
from lightning_modules import CTCModule, FineTuneCTC, load_model
from lightning_modules.backbones import CheckpointBackbone
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def source_ckpt(tokenizer, tmp_path):
    """A trained-for-2-steps CTCModule checkpoint with a BiLSTM head."""
    model = CTCModule(make_tiny_backbone(), tokenizer.vocab_size, head="bilstm", head_hidden=16, lr=3e-3,
                      tokenizer=tokenizer.to_dict())
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(tokenizer))
    trainer.save_checkpoint(tmp_path / "source.ckpt")
    return tmp_path / "source.ckpt"


def test_reuse_head_starts_from_the_source_model(source_ckpt, tokenizer, tiny_batch):
    assert load_tokenizer(source_ckpt).to_dict() == tokenizer.to_dict()  # data side: tokenizer_path: <ckpt>
    model = FineTuneCTC(CheckpointBackbone(str(source_ckpt)), tokenizer.vocab_size, reuse_head=True,
                        head="bilstm", head_hidden=16, tokenizer=tokenizer.to_dict())
    model.load_pretrained()  # what setup("fit"/"validate") calls for a fresh run
    source = load_model(source_ckpt)
    with torch.no_grad():
        ours = model.eval()(tiny_batch["audio"], tiny_batch["lengths"])[0]
        theirs = source(tiny_batch["audio"], tiny_batch["lengths"])[0]
    torch.testing.assert_close(ours, theirs)


def test_reuse_head_refuses_another_vocabulary_or_backbone(source_ckpt, tokenizer):
    other = CharTokenizer(list("abc "))
    model = FineTuneCTC(CheckpointBackbone(str(source_ckpt)), other.vocab_size, reuse_head=True, head="bilstm",
                        head_hidden=16, tokenizer=other.to_dict())
    with pytest.raises(ValueError, match=r"vocabulary of .*source\.ckpt differs.*tokenizer_path"):
        model.load_pretrained()
    with pytest.raises(ValueError, match="reuse_head=True needs a CheckpointBackbone"):
        FineTuneCTC(make_tiny_backbone(), tokenizer.vocab_size, reuse_head=True).load_pretrained()
    wrong_head = FineTuneCTC(CheckpointBackbone(str(source_ckpt)), tokenizer.vocab_size, reuse_head=True,
                             head="linear", tokenizer=tokenizer.to_dict())
    with pytest.raises(ValueError, match=r"source\.ckpt \(head\) do not fit"):
        wrong_head.load_pretrained()


def test_fine_tuned_checkpoint_loads_alone(source_ckpt, tokenizer, tiny_batch, tmp_path):
    """``load_model`` rebuilds a reuse_head run from its own checkpoint (inner backbone config, no source file)."""
    model = FineTuneCTC(CheckpointBackbone(str(source_ckpt)), tokenizer.vocab_size, reuse_head=True,
                        head="bilstm", head_hidden=16, lr=3e-3, tokenizer=tokenizer.to_dict())
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(tokenizer))
    trainer.save_checkpoint(tmp_path / "tuned.ckpt")
    source_ckpt.unlink()
    rebuilt = load_model(tmp_path / "tuned.ckpt")
    assert type(rebuilt) is FineTuneCTC and rebuilt.hparams.reuse_head
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(tiny_batch["audio"], tiny_batch["lengths"])[0],
                                   model.eval()(tiny_batch["audio"], tiny_batch["lengths"])[0])
