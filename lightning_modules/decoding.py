"""CTC decoders: greedy (the default) and beam search with an optional lexicon and word n-gram LM.

    decoder = build_decoder(DecoderConfig(kind="beam", beam_size=50, lexicon="lm/lexicon.txt",
                                          lm="lm/lm.arpa", lm_weight=1.0, word_score=0.0), tokenizer)
    texts = decoder(log_probs, lengths)       # (B, T, V) CTC log-probs, (B,) valid frames -> B strings

Contract (``Decoder``): ``__call__(log_probs (B, T, V), lengths (B,)) -> list[str]``, one transcript per
utterance, only the first ``lengths[b]`` frames of row b are read; decoders hold no model state, so
any of them can decode any log-probs of the model whose tokenizer they were built with.

Beam search runs on ``torchaudio.models.decoder.ctc_decoder`` (flashlight-text, CPU, C++). Chosen over
pyctcdecode + kenlm because flashlight-text installs as a manylinux wheel with KenLM built in (ARPA and
binary LMs, no compiler), while the ``kenlm`` Python package is an sdist that needs a C++ toolchain.
Three modes, picked from the config:

- ``lexicon`` + ``lexicon_only`` (default when a lexicon is given): flashlight's lexicon decoder, only
  lexicon words can be output; LM optional. Output: the decoded words joined by spaces.
- ``lm`` and/or a lexicon with ``lexicon_only=False`` (or a ``word_score``): lexicon-free decoding with
  ``word_lm.OpenVocabularyWordLM``; any spelling can be output, known words (lexicon, else LM unigrams)
  are preferred by ``unk_score``.
- neither: lexicon-free prefix beam search on the acoustic scores alone; ``beam_size=1`` is exactly
  greedy decoding.

Scores: acoustic log-probs (natural log) + ``lm_weight`` x LM log10 probability + ``word_score`` per
word (+ ``unk_score`` per unknown word). Tune the weights with a decode-only sweep
(``experiments/decode_sweep.py``). SentencePiece models: lexicon spellings are the tokenizer's pieces;
the word boundary is the "▁" that starts a piece.
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import Tensor

from datamodules.lexicon import WORD_DELIMITER, decoder_tokens, read_lexicon, word_pieces
from datamodules.ngram import BOS, EOS, UNK, arpa_unigrams
from datamodules.text import CharTokenizer, SentencePieceTokenizer


def greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax over (B, T, V), keep valid frames, collapse repeats, drop blanks."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        ids = torch.unique_consecutive(row[:n])
        out.append(ids[ids != blank].tolist())
    return out


class Decoder(Protocol):
    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]: ...


@dataclass(frozen=True)
class DecoderConfig:
    """Plain-value description of a decoder (CLI / YAML / sweep parameters); see module docstring."""

    kind: Literal["greedy", "beam"] = "beam"
    beam_size: int = 50
    beam_size_token: int | None = None  # tokens tried per frame (None: all)
    beam_threshold: float = 25.0        # drop hypotheses this far below the best one
    lexicon: str | None = None
    lexicon_only: bool = True
    lm: str | None = None
    lm_weight: float = 1.0
    word_score: float = 0.0
    unk_score: float = -10.0            # open vocabulary only

    def __post_init__(self) -> None:
        if self.kind not in ("greedy", "beam"):
            raise ValueError(f"decoder kind must be 'greedy' or 'beam', got {self.kind!r}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        for name in ("lexicon", "lm"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"decoder {name} {path}: no such file (build one with `speechxfer lm`)")

    @property
    def mode(self) -> str:
        """"greedy", "lexicon", "open" or "acoustic" (see module docstring)."""
        if self.kind == "greedy":
            return "greedy"
        if self.lexicon and self.lexicon_only:
            return "lexicon"
        return "open" if self.lm or self.lexicon or self.word_score else "acoustic"


class GreedyDecoder:
    """Best path: argmax per frame, collapse repeats, drop blanks, ``tokenizer.decode``."""

    def __init__(self, tokenizer: CharTokenizer | SentencePieceTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        return [self.tokenizer.decode(ids) for ids in greedy_decode(log_probs, lengths, self.tokenizer.blank_id)]


class BeamSearchDecoder:
    """flashlight CTC beam search (see module docstring) for ``config.kind == "beam"``."""

    def __init__(self, tokenizer: CharTokenizer | SentencePieceTokenizer, config: DecoderConfig) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.tokenizer, self.config = tokenizer, config
        names = decoder_tokens(tokenizer)
        blank = names[tokenizer.blank_id]
        options = dict(tokens=names, nbest=1, beam_size=config.beam_size, beam_size_token=config.beam_size_token,
                       beam_threshold=config.beam_threshold, blank_token=blank, unk_word="<unk>")
        if config.mode == "lexicon":
            check_lexicon(config.lexicon, names)
            words = lexicon_word_order(config.lexicon)
            # the word delimiter is flashlight's "silence" between words (SentencePiece: none, use blank)
            sil = WORD_DELIMITER if isinstance(tokenizer, CharTokenizer) else blank
            lm = load_kenlm(config.lm, words) if config.lm else None
            self._decoder = ctc_decoder(lexicon=config.lexicon, lm=lm, lm_weight=config.lm_weight,
                                        word_score=config.word_score, unk_score=-math.inf, sil_token=sil, **options)
            dictionary = self._decoder.word_dict
            if [dictionary.get_entry(i) for i in range(dictionary.index_size())] != words:
                raise RuntimeError(f"{config.lexicon}: flashlight's word order changed between two reads")
        else:
            lm = open_vocabulary_lm(tokenizer, config) if config.mode == "open" else None
            self._decoder = ctc_decoder(lexicon=None, lm=lm, lm_weight=1.0, sil_token=blank, **options)

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        emissions = log_probs.detach().float().cpu().contiguous()
        texts = []
        for row, n in zip(emissions, lengths.cpu().tolist()):
            hyps = self._decoder(row[None, :n]) if n > 0 else [[]]
            texts.append(self._text(hyps[0][0]) if hyps[0] else "")
        return texts

    def _text(self, hyp) -> str:
        if self.config.mode == "lexicon":
            return " ".join(hyp.words)
        return self.tokenizer.decode(hyp.tokens.tolist())


def open_vocabulary_lm(tokenizer: CharTokenizer | SentencePieceTokenizer, config: DecoderConfig):
    """``OpenVocabularyWordLM`` for ``config`` (known words: lexicon, else the ARPA's unigrams)."""
    from lightning_modules.word_lm import OpenVocabularyWordLM

    known = None
    if config.lexicon:
        known = sorted(read_lexicon(config.lexicon))
    elif config.lm:
        try:
            known = sorted(set(arpa_unigrams(config.lm)) - {BOS, EOS, UNK})
        except (UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{config.lm}: open-vocabulary decoding reads the LM's words from an ARPA file; "
                             f"pass an ARPA LM or a lexicon ({err})") from None
    kenlm = load_kenlm(config.lm, [*known, UNK]) if config.lm else None
    return OpenVocabularyWordLM(word_pieces(tokenizer), known, kenlm, config.lm_weight, config.word_score,
                                config.unk_score)


@functools.lru_cache(maxsize=2)
def _kenlm(path: str, mtime_ns: int, words: tuple[str, ...]):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    return KenLM(path, Dictionary(list(words)))


def load_kenlm(path: str, words: list[str]):
    """flashlight ``KenLM`` mapping word index i to ``words[i]``; the last two loaded are kept (sweep trials
    differ in weights only, and a large LM takes long to read)."""
    return _kenlm(str(Path(path).resolve()), Path(path).stat().st_mtime_ns, tuple(words))


def check_lexicon(path: str, names: list[str]) -> None:
    """``ValueError`` naming the file and word when a spelling uses a token the model does not have."""
    known = set(names)
    for word, spellings in read_lexicon(path).items():
        for spelling in spellings:
            unknown = [t for t in spelling if t not in known]
            if unknown:
                raise ValueError(f"{path}: word {word!r} is spelled with {unknown}, not tokens of this model "
                                 "(was the lexicon built with another tokenizer? rebuild it with `speechxfer lm`)")


def lexicon_word_order(path: str) -> list[str]:
    """Words of the word dictionary torchaudio's ``ctc_decoder`` builds from this lexicon, by index."""
    from flashlight.lib.text.dictionary import create_word_dict, load_words

    dictionary = create_word_dict(load_words(path))
    return [dictionary.get_entry(i) for i in range(dictionary.index_size())]


def build_decoder(config: DecoderConfig, tokenizer: CharTokenizer | SentencePieceTokenizer) -> Decoder:
    """The decoder ``config`` describes, for ``tokenizer``'s vocabulary."""
    return GreedyDecoder(tokenizer) if config.kind == "greedy" else BeamSearchDecoder(tokenizer, config)


# ---------------------------------------------------------------- command-line flags (transcribe, bench)
def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    """``--decoder greedy|beam --beam-size --lexicon --lm --lm-weight --word-score ...`` (DecoderConfig)."""
    d = DecoderConfig()
    group = parser.add_argument_group("decoding (default: greedy)")
    group.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    group.add_argument("--beam-size", type=int, default=d.beam_size)
    group.add_argument("--beam-size-token", type=int, default=d.beam_size_token)
    group.add_argument("--beam-threshold", type=float, default=d.beam_threshold)
    group.add_argument("--lexicon", help="lexicon.txt written by `speechxfer lm`")
    group.add_argument("--open-vocabulary", action="store_true", help="also allow words outside the lexicon")
    group.add_argument("--lm", help="word n-gram LM (ARPA, e.g. lm.arpa from `speechxfer lm`, or KenLM binary)")
    group.add_argument("--lm-weight", type=float, default=d.lm_weight)
    group.add_argument("--word-score", type=float, default=d.word_score)
    group.add_argument("--unk-score", type=float, default=d.unk_score, help="per word outside the lexicon")


def decoder_config_from_args(args: argparse.Namespace) -> DecoderConfig:
    """The ``DecoderConfig`` of flags added by ``add_decoder_arguments``."""
    if args.decoder == "greedy" and (args.lm or args.lexicon):
        raise ValueError("--lm/--lexicon need --decoder beam")
    return DecoderConfig(kind=args.decoder, beam_size=args.beam_size, beam_size_token=args.beam_size_token,
                         beam_threshold=args.beam_threshold, lexicon=args.lexicon,
                         lexicon_only=not args.open_vocabulary, lm=args.lm, lm_weight=args.lm_weight,
                         word_score=args.word_score, unk_score=args.unk_score)


def decoder_flags(config: DecoderConfig) -> str:
    """The ``add_decoder_arguments`` flags that give ``config`` (defaults left out)."""
    default, flags = DecoderConfig(), [f"--decoder {config.kind}"]
    for name in ("beam_size", "beam_size_token", "beam_threshold", "lexicon", "lm", "lm_weight", "word_score",
                 "unk_score"):
        value = getattr(config, name)
        if value != getattr(default, name):
            flags.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(flags + ([] if config.lexicon_only else ["--open-vocabulary"]))
