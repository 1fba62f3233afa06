"""CTC decoders: beam size 1 == greedy, lexicon-only beams stay in the lexicon, an LM from a text favours
that text, extra decoders at validate/test time (``CTCModule(eval_decoders=...)``), clear errors."""

from __future__ import annotations

import argparse
import random

import pytest
import pytorch_lightning as pl
import torch

from datamodules.lexicon import build_lexicon, write_lexicon
from datamodules.ngram import estimate_kneser_ney, write_arpa
from datamodules.text import SentencePieceTokenizer
from experiments.lm import build_lm
from lightning_modules import CTCModule, load_model
from lightning_modules.backbones import ScratchEncoder
from lightning_modules.decoding import (
    BeamSearchDecoder, DecoderConfig, GreedyDecoder, add_decoder_arguments, decoder_config_from_args, decoder_flags,
)
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone
from tests.corpus_factory import WORDS

pytestmark = pytest.mark.usefixtures("one_thread")
LEXICON_WORDS = ["the", "cat", "sat", "on", "a", "mat"]


def random_log_probs(vocab: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(6, 50, V) log-probs with padding: lengths 50, 37, 1, 0, 12, 50; padded frames hold garbage."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(6, 50, vocab, generator=g)).log_softmax(-1), torch.tensor([50, 37, 1, 0, 12, 50])


def sentencepiece_tokenizer() -> SentencePieceTokenizer:
    rng = random.Random(0)
    return SentencePieceTokenizer.build([" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(200)],
                                        vocab_size=40)


def spelled(text: str, tokenizer, ambiguous: dict[int, dict[str, float]] | None = None) -> torch.Tensor:
    """(1, 3 * len(text), V) log-probs that spell ``text`` (char tokenizer): per character one frame of that
    character (or the ``ambiguous[i]`` distribution) and two blank frames."""
    frames = []
    for i, ch in enumerate(text):
        probs = (ambiguous or {}).get(i, {ch: 0.9})
        frames += [probs, {"<blank>": 0.9}, {"<blank>": 0.9}]
    out = torch.full((1, len(frames), tokenizer.vocab_size), 1e-3)
    for t, probs in enumerate(frames):
        for token, p in probs.items():
            out[0, t, 0 if token == "<blank>" else tokenizer.tokens.index(token)] = p
    return (out / out.sum(-1, keepdim=True)).log()


def legacy_tiny_backbone() -> ScratchEncoder:
    """make_tiny_backbone() with the pre-issue-10 frontend (unpadded, no LayerNorm after the projection):
    with the new one the 100-step, lr 1e-2 run below still emits only blanks."""
    torch.manual_seed(0)
    return ScratchEncoder(n_mels=40, conv_channels=8, hidden=32, num_layers=2, kind="conformer", subsampling=2,
                          num_heads=2, conv_kernel=7, dropout=0.0, proj_norm=False, center=False, conv_padding=False)


@pytest.fixture(scope="module")
def trained():
    """A tiny CTC model trained 100 steps on tone speech, and its validation batches (padded)."""
    torch.set_num_threads(1)
    pl.seed_everything(0)
    tok = char_tokenizer()
    backbone = legacy_tiny_backbone()
    model = CTCModule(backbone, tok.to_dict(), lr=1e-2, dropout=0.0,
                      decay="constant")
    dm = TinyDataModule(tok, n_train=16, n_val=6, val_domains=("source",))
    pl.Trainer(max_steps=100, limit_val_batches=0, **QUIET).fit(model, datamodule=dm)
    return model.eval(), dm


@pytest.fixture
def lm_files(tmp_path):
    tok = char_tokenizer()
    write_lexicon(build_lexicon(LEXICON_WORDS, tok), tmp_path / "lexicon.txt")
    write_arpa(estimate_kneser_ney(["the cat sat on the mat", "a cat sat on a mat"], 3), tmp_path / "lm.arpa")
    return tmp_path / "lexicon.txt", tmp_path / "lm.arpa"


# ------------------------------------------------------------------ beam size 1 == greedy
@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_beam_size_1_without_lm_equals_greedy_on_random_log_probs(kind, scale):
    tok = char_tokenizer() if kind == "char" else sentencepiece_tokenizer()
    beam = BeamSearchDecoder(tok, DecoderConfig(beam_size=1))
    for seed in range(3):
        log_probs, lengths = random_log_probs(tok.vocab_size, seed, scale)
        greedy = GreedyDecoder(tok)(log_probs, lengths)
        assert beam(log_probs, lengths) == greedy
        assert greedy[3] == "" and all(greedy[i] for i in (0, 1, 5))


def test_beam_size_1_without_lm_equals_greedy_on_trained_log_probs(trained):
    model, dm = trained
    batch = dm.val_batches[0][0]
    with torch.no_grad():
        log_probs, lengths = model(batch["audio"], batch["lengths"])
    assert len(set(lengths.tolist())) > 1  # padded batch
    greedy = model.decode(log_probs, lengths)
    assert sum(len(t.replace(" ", "")) for t in greedy) > 10  # the model emits characters, not only blanks
    assert model.decode(log_probs, lengths, BeamSearchDecoder(model.tokenizer, DecoderConfig(beam_size=1))) == greedy


# ------------------------------------------------------------------ lexicon
@pytest.mark.parametrize("with_lm", [False, True])
def test_lexicon_only_beam_search_never_outputs_a_word_outside_the_lexicon(lm_files, with_lm):
    lexicon, lm = lm_files
    tok = char_tokenizer()
    decoder = BeamSearchDecoder(tok, DecoderConfig(beam_size=16, lexicon=str(lexicon), lm=str(lm) if with_lm else None))
    open_vocabulary = BeamSearchDecoder(tok, DecoderConfig(beam_size=16, lexicon=str(lexicon), lexicon_only=False))
    outside = 0
    for seed in range(4):
        log_probs, lengths = random_log_probs(tok.vocab_size, seed, scale=2.0)
        for text in decoder(log_probs, lengths):
            assert set(text.split()) <= set(LEXICON_WORDS), text
        outside += sum(w not in LEXICON_WORDS for t in open_vocabulary(log_probs, lengths) for w in t.split())
    assert outside > 0  # the same log-probs give other words when the lexicon is not enforced


def test_sentencepiece_lexicon_only_stays_in_the_lexicon(tmp_path):
    tok = sentencepiece_tokenizer()
    lexicon = write_lexicon(build_lexicon(LEXICON_WORDS, tok), tmp_path / "lexicon.txt")
    decoder = BeamSearchDecoder(tok, DecoderConfig(beam_size=16, lexicon=str(lexicon)))
    for seed in range(3):
        log_probs, lengths = random_log_probs(tok.vocab_size, seed, scale=2.0)
        for text in decoder(log_probs, lengths):
            assert set(text.split()) <= set(LEXICON_WORDS), text


# ------------------------------------------------------------------ the LM
@pytest.mark.parametrize("lexicon_only", [True, False])
def test_an_lm_built_from_a_text_favours_its_word_sequences(tmp_path, lexicon_only):
    """Acoustically "cab" (b 0.5, t 0.4): greedy and LM-free beams say "cab", the LM of a text with
    "the cat sat" (and "cab" elsewhere) makes the beam say "cat"."""
    tok = char_tokenizer()
    text = ["the cat sat on the mat", "the cat sat", "a cat sat on a mat", "a cab stopped"]
    build_lm([tok.normalize(t) for t in text], tok, 3, tmp_path, ["test"])
    log_probs = spelled("the cab sat", tok, ambiguous={6: {"b": 0.5, "t": 0.4}})
    lengths = torch.tensor([log_probs.shape[1]])
    lexicon, lm = str(tmp_path / "lexicon.txt"), str(tmp_path / "lm.arpa")
    assert GreedyDecoder(tok)(log_probs, lengths) == ["the cab sat"]
    no_lm = DecoderConfig(beam_size=20, lexicon=lexicon, lexicon_only=lexicon_only)
    assert BeamSearchDecoder(tok, no_lm)(log_probs, lengths) == ["the cab sat"]
    with_lm = DecoderConfig(beam_size=20, lexicon=lexicon, lexicon_only=lexicon_only, lm=lm, lm_weight=1.0)
    assert BeamSearchDecoder(tok, with_lm)(log_probs, lengths) == ["the cat sat"]
    without_lexicon = DecoderConfig(beam_size=20, lm=lm, lm_weight=1.0)
    assert BeamSearchDecoder(tok, without_lexicon)(log_probs, lengths) == ["the cat sat"]


def test_open_vocabulary_outputs_clear_unknown_words_and_charges_unk_score(lm_files):
    lexicon, lm = lm_files
    tok = char_tokenizer()
    log_probs = spelled("the dog sat", tok)
    lengths = torch.tensor([log_probs.shape[1]])
    free = BeamSearchDecoder(tok, DecoderConfig(beam_size=20, lexicon=str(lexicon), lexicon_only=False, lm=str(lm)))
    assert free(log_probs, lengths) == ["the dog sat"]
    closed = BeamSearchDecoder(tok, DecoderConfig(beam_size=20, lexicon=str(lexicon), lm=str(lm)))
    assert "dog" not in closed(log_probs, lengths)[0]


# ------------------------------------------------------------------ CTCModule.eval_decoders
def test_eval_decoders_log_extra_metrics_in_validate_and_test_only(trained, lm_files, tmp_path):
    trained_model, dm = trained
    lexicon, lm = lm_files
    decoders = {"beam1": DecoderConfig(beam_size=1), "lm": DecoderConfig(beam_size=8, lexicon=str(lexicon), lm=str(lm))}
    tok = trained_model.tokenizer
    model = CTCModule(legacy_tiny_backbone(), tok.to_dict(), dropout=0.0,
                      eval_decoders=decoders)
    model.load_state_dict(trained_model.state_dict())
    results = pl.Trainer(**QUIET).test(model, datamodule=dm, verbose=False)[0]
    assert results["test_beam1/source/wer"] == results["test/source/wer"]  # beam 1 == greedy
    assert results["test_beam1/source/cer"] == results["test/source/cer"]
    assert {"test_lm/source/wer", "test_lm/source/cer"} <= set(results) and "test_lm/source/loss" not in results
    fit = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, **QUIET)
    fit.fit(model, datamodule=dm)
    assert "val/source/wer" in fit.callback_metrics
    assert not [k for k in fit.callback_metrics if k.startswith(("val_beam1", "val_lm"))]  # training stays greedy
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)
    assert "eval_decoders" not in torch.load(path, weights_only=False)["hyper_parameters"]
    assert load_model(path).eval_decoders == {}


def test_eval_decoders_in_fit_also_decode_the_fits_validations(trained):
    trained_model, dm = trained
    tok = trained_model.tokenizer
    model = CTCModule(legacy_tiny_backbone(), tok.to_dict(), dropout=0.0,
                      eval_decoders={"beam1": DecoderConfig(beam_size=1)}, eval_decoders_in_fit=True)
    model.load_state_dict(trained_model.state_dict())
    fit = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, **QUIET)
    fit.fit(model, datamodule=dm)
    metrics = fit.callback_metrics
    assert metrics["val_beam1/source/wer"] == metrics["val/source/wer"]  # beam 1 == greedy, same log-probs
    assert metrics["val_beam1/source/cer"] == metrics["val/source/cer"]


# ------------------------------------------------------------------ configuration and errors
def test_flags_round_trip_and_clear_errors(tmp_path, lm_files):
    lexicon, lm = lm_files
    config = DecoderConfig(beam_size=7, lexicon=str(lexicon), lexicon_only=False, lm=str(lm), lm_weight=0.3,
                           word_score=-1.0)
    parser = argparse.ArgumentParser()
    add_decoder_arguments(parser)
    assert decoder_config_from_args(parser.parse_args(decoder_flags(config).split())) == config
    assert decoder_config_from_args(parser.parse_args([])).kind == "greedy"
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        DecoderConfig(lm=str(tmp_path / "missing.arpa"))
    other = write_lexicon(build_lexicon(["the"], sentencepiece_tokenizer()), tmp_path / "sp_lexicon.txt")
    with pytest.raises(ValueError, match="sp_lexicon.txt: word 'the'"):
        BeamSearchDecoder(char_tokenizer(), DecoderConfig(lexicon=str(other)))
    with pytest.raises(ValueError, match="eval_decoders names"):
        CTCModule(make_tiny_backbone(), char_tokenizer().to_dict(), eval_decoders={"Beam LM": DecoderConfig()})


def test_sentencepiece_open_vocabulary_and_lm_decoding(tmp_path):
    """SentencePiece: "▁" pieces start words; lexicon, open-vocabulary and LM-only beams all read a clearly
    spelled sentence back as words."""
    tok = sentencepiece_tokenizer()
    text = ["the cat sat on a mat", "a red box", "the big dog ran far"]
    build_lm(text, tok, 3, tmp_path, ["test"])
    ids = tok.encode("the cat sat on a mat")
    log_probs = torch.full((1, 3 * len(ids), tok.vocab_size), 1e-3)
    for i, token in enumerate(ids):
        log_probs[0, 3 * i, token] = log_probs[0, 3 * i + 1, 0] = log_probs[0, 3 * i + 2, 0] = 1.0
    log_probs = (log_probs / log_probs.sum(-1, keepdim=True)).log()
    lengths = torch.tensor([log_probs.shape[1]])
    lexicon, lm = str(tmp_path / "lexicon.txt"), str(tmp_path / "lm.arpa")
    for config in (DecoderConfig(lexicon=lexicon, lm=lm), DecoderConfig(lexicon=lexicon, lm=lm, lexicon_only=False),
                   DecoderConfig(lm=lm)):
        assert BeamSearchDecoder(tok, config)(log_probs, lengths) == ["the cat sat on a mat"], config.mode
