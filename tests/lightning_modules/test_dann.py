"""DANNCTC(init_head_from=...): DANN starts from the whole source model (encoder + CTC head)."""

from __future__ import annotations

import torch

from datamodules.text import CharTokenizer
from lightning_modules import DANNCTC
from tests.conftest import make_tiny_backbone
from tests.lightning_modules.test_vocab_transfer import save_source


def test_dann_head_starts_from_the_checkpoint_head_domain_classifier_fresh(tmp_path):
    tokenizer = CharTokenizer(list(" abcde'"))
    source = save_source(tmp_path / "src.ckpt", tokenizer)
    torch.manual_seed(2)
    dann = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), init_head_from=str(tmp_path / "src.ckpt"))
    with torch.no_grad():  # a head unlike the source's (the tiny backbone fixes the init seed)
        for p in dann.head.parameters():
            p.normal_()
    classifier = {k: v.clone() for k, v in dann.domain_classifier.state_dict().items()}
    assert not torch.equal(dann.head.state_dict()["proj.weight"], source.head.state_dict()["proj.weight"])
    dann.setup("fit")
    for name, value in source.head.state_dict().items():
        assert torch.equal(dann.head.state_dict()[name], value), name
    for name, value in dann.domain_classifier.state_dict().items():
        assert torch.equal(value, classifier[name]), name


def test_dann_without_init_head_from_keeps_its_fresh_head():
    torch.manual_seed(2)
    dann = DANNCTC(make_tiny_backbone(), CharTokenizer(list(" abcde'")).to_dict())
    before = {k: v.clone() for k, v in dann.head.state_dict().items()}
    dann.setup("fit")
    assert all(torch.equal(v, before[k]) for k, v in dann.head.state_dict().items())
