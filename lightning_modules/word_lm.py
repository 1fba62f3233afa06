"""Open-vocabulary word n-gram scoring for lexicon-free CTC beam search (flashlight ``CTCDecoderLM``).

flashlight's lexicon decoder can only output lexicon words. To allow words outside the lexicon, the
lexicon-free decoder runs with this LM, called on every emitted token: tokens build the current word
(``datamodules.lexicon.word_pieces``: CharTokenizer's ``"|"`` ends a word, a SentencePiece ``"▁"`` piece
starts one); when a word is complete it is scored by the word n-gram (flashlight's KenLM: ARPA or
KenLM binary). Per completed word the returned score is ::

    lm_weight * log10 P(word | history) + word_score  [+ unk_score if the word is not a known word]

and ``finish`` adds the last word and ``lm_weight * log10 P(</s> | history)``. ``unk_score`` is
charged once per unknown word, as soon as the partial word stops being a prefix of a known word
(early, so the beam can prune it) or at its end. Known words: the lexicon if given, else the LM's
unigrams (read from the ARPA). The decoder itself runs with ``lm_weight=1``: the weights live here.

States are flashlight ``LMState`` objects; ``state.child(token)`` returns the same object for the
same (state, token), and the decoder merges hypotheses by state identity, so everything this LM
knows about a state (n-gram state, current partial word) is kept in dicts keyed by the state and
reset per utterance in ``start``. It is Python: about 5 us per call (see benchmarks/bench_decode.py).
"""

from __future__ import annotations

from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState


class OpenVocabularyWordLM(CTCDecoderLM):
    """Word n-gram over token sequences (see module docstring).

    Args:
        pieces: per token id ``(starts a word, text it adds)`` (``datamodules.lexicon.word_pieces``).
        known_words: words that are not penalised, in the KenLM dictionary's order; None: no word is unknown.
        kenlm: flashlight ``KenLM`` built with the dictionary ``[*known_words, "<unk>"]``, or None
            (then only ``word_score`` / ``unk_score`` apply).
        lm_weight, word_score, unk_score: see module docstring.
    """

    def __init__(self, pieces: list[tuple[bool, str]], known_words: list[str] | None, kenlm,
                 lm_weight: float, word_score: float, unk_score: float) -> None:
        CTCDecoderLM.__init__(self)
        self.pieces = pieces
        self.lm_weight, self.word_score, self.unk_score = lm_weight, word_score, unk_score
        self.known = None if known_words is None else set(known_words)
        self.prefixes = None if known_words is None else {w[:i] for w in known_words for i in range(1, len(w) + 1)}
        self.word_index = {w: i for i, w in enumerate(known_words or ())}
        self.unk_index = len(self.word_index)
        self.kenlm = kenlm
        self._info: dict[CTCDecoderLMState, tuple] = {}    # state -> (n-gram state, partial word, unknown)
        self._scores: dict[CTCDecoderLMState, float] = {}  # state -> score of the token that led to it

    def start(self, start_with_nothing: bool) -> CTCDecoderLMState:
        self._info.clear()
        self._scores.clear()
        state = CTCDecoderLMState()
        self._info[state] = (self.kenlm.start(False) if self.kenlm else None, "", False)
        return state

    def score(self, state: CTCDecoderLMState, token: int) -> tuple[CTCDecoderLMState, float]:
        child = state.child(token)
        cached = self._scores.get(child)
        if cached is not None:
            return child, cached
        ngram_state, partial, unknown = self._info[state]
        starts, text = self.pieces[token]
        score = 0.0
        if starts:
            if partial:
                ngram_state, score = self._end_word(ngram_state, partial, unknown)
            partial, unknown = text, False
        else:
            partial += text
        if partial and not unknown and self.prefixes is not None and partial not in self.prefixes:
            unknown = True
            score += self.unk_score
        self._info[child] = (ngram_state, partial, unknown)
        self._scores[child] = score
        return child, score

    def finish(self, state: CTCDecoderLMState) -> tuple[CTCDecoderLMState, float]:
        ngram_state, partial, unknown = self._info[state]
        score = 0.0
        if partial:
            ngram_state, score = self._end_word(ngram_state, partial, unknown)
        if self.kenlm is not None:
            score += self.lm_weight * self.kenlm.finish(ngram_state)[1]
        return state.child(-1), score

    def _end_word(self, ngram_state, word: str, unknown: bool) -> tuple[object, float]:
        score = self.word_score
        if not unknown and self.known is not None and word not in self.known:
            score += self.unk_score
        if self.kenlm is not None:
            ngram_state, logprob = self.kenlm.score(ngram_state, self.word_index.get(word, self.unk_index))
            score += self.lm_weight * logprob
        return ngram_state, score
