"""Vocabulary transfer: the new head's rows of shared symbols (and blank) are copied exactly."""

from __future__ import annotations

import pytest
import torch

from datamodules.text import CharTokenizer, SentencePieceTokenizer
from lightning_modules import CTCModule, FineTuneCTC
from lightning_modules.vocab_transfer import shared_rows
from tests.conftest import make_tiny_backbone


def save_source(path, tokenizer, head="linear") -> CTCModule:
    """A 'trained' source model checkpoint (the keys Lightning writes that transfer_head reads)."""
    torch.manual_seed(1)
    source = CTCModule(make_tiny_backbone(), tokenizer.to_dict(), head=head,
                       head_hidden=8)
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
                "speechxfer": {"module_class": "lightning_modules.ctc.CTCModule"}}, path)
    return source


def test_shared_symbols_and_blank_are_copied_new_symbols_keep_their_init(tmp_path):
    old = CharTokenizer(list(" abcde'"))
    new = CharTokenizer(list(" AaBbé'e"))  # new casing + accents; shares " ", a, b, e, ' and the blank
    source = save_source(tmp_path / "src.ckpt", old)
    torch.manual_seed(2)
    target = FineTuneCTC(make_tiny_backbone(), new.to_dict(),
                         init_head_from=str(tmp_path / "src.ckpt"))
    fresh = {k: v.clone() for k, v in target.head.state_dict().items()}
    target.setup("fit")
    rows = shared_rows(old.symbols, new.symbols)
    assert rows[0] == (0, 0) and all(new.symbols[n] == old.symbols[o] for n, o in rows)
    assert {new.symbols[n] for n, _ in rows} == {"<blank>", " ", "'", "a", "b", "e"}
    for name in ("proj.weight", "proj.bias"):
        got, was, src = target.head.state_dict()[name], fresh[name], source.head.state_dict()[name]
        for n, o in rows:
            assert torch.equal(got[n], src[o])
        copied = {n for n, _ in rows}
        for n in set(range(new.vocab_size)) - copied:  # A, B, é: fresh rows, untouched
            assert torch.equal(got[n], was[n])


def test_bilstm_head_copies_the_lstm_whole(tmp_path):
    old, new = CharTokenizer(list(" ab")), CharTokenizer(list(" bc"))
    source = save_source(tmp_path / "src.ckpt", old, head="bilstm")
    target = FineTuneCTC(make_tiny_backbone(), new.to_dict(), head="bilstm",
                         head_hidden=8, init_head_from=str(tmp_path / "src.ckpt"))
    target.setup("fit")
    src, got = source.head.state_dict(), target.head.state_dict()
    assert all(torch.equal(src[k], got[k]) for k in src if k.startswith("lstm."))
    assert torch.equal(got["proj.weight"][2], src["proj.weight"][3])  # "b": id 3 before, id 2 now
    assert torch.equal(got["proj.weight"][0], src["proj.weight"][0])  # blank


def test_sentencepiece_pieces_are_matched_by_string():
    texts = ["the cat sat on the mat", "a dog and a cat"] * 20
    old = SentencePieceTokenizer.build(texts, vocab_size=30)
    new = SentencePieceTokenizer.build(texts + ["zebra quiz"] * 5, vocab_size=40)
    rows = shared_rows(old.symbols, new.symbols)
    assert rows[0] == (0, 0) and all(new.symbols[n] == old.symbols[o] for n, o in rows)


def test_mismatched_heads_are_a_clear_error(tmp_path):
    tok = CharTokenizer(list(" ab"))
    save_source(tmp_path / "src.ckpt", tok, head="bilstm")
    target = FineTuneCTC(make_tiny_backbone(), tok.to_dict(),
                         init_head_from=str(tmp_path / "src.ckpt"))
    with pytest.raises(ValueError, match=r"src\.ckpt.*same head type"):
        target.setup("fit")
