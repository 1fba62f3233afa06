"""Kneser-Ney ARPA writer: proper distributions, KN continuation counts, KenLM reads the same numbers."""

from __future__ import annotations

import math
import random

import pytest

from datamodules.ngram import (
    BOS, EOS, FALLBACK_DISCOUNTS, UNK, arpa_unigrams, estimate_kneser_ney, read_arpa, write_arpa,
)

WORDS = "the cat sat on a mat red box big dog ran far".split()


def random_text(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def predicted(arpa) -> list[str]:
    return [w for w in arpa.vocabulary() if w != BOS]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("n_sentences", [1, 300])
def test_every_context_is_a_probability_distribution(tmp_path, order, n_sentences):
    path = write_arpa(estimate_kneser_ney(random_text(n_sentences), order), tmp_path / "lm.arpa")
    arpa = read_arpa(path)
    assert arpa.order == order and {BOS, EOS, UNK} <= set(arpa.vocabulary())
    contexts = [(), (BOS,), ("the",), (BOS, "the"), ("cat", "sat"), ("zebra", "the"), ("a", "b", "c"), ("mat", EOS)]
    for context in contexts:
        total = sum(10 ** arpa.logprob(w, context) for w in predicted(arpa))
        assert total == pytest.approx(1.0, abs=1e-4), context
    assert arpa.logprob(BOS, ()) == -99.0


def test_lower_orders_use_continuation_counts():
    """"francisco" is frequent but follows one word only; "cat" follows many: KN ranks cat higher as a unigram."""
    text = ["san francisco"] * 20 + ["the cat", "a cat", "my cat", "one cat", "big cat"]
    arpa_counts = estimate_kneser_ney(text, 2)
    unigram = {g[0]: p for g, p in arpa_counts.logprobs[0].items()}
    assert unigram["cat"] > unigram["francisco"]
    assert arpa_counts.logprobs[1][("san", "francisco")] > math.log10(0.9)


def test_tiny_texts_fall_back_to_fixed_discounts():
    model = estimate_kneser_ney(["hello world"], 3)
    assert model.discounts[-1] == FALLBACK_DISCOUNTS  # every trigram seen once: no count-of-counts estimate
    assert model.logprobs[2][(BOS, "hello", "world")] > model.logprobs[0][("world",)]  # the text still matters


def test_flashlight_kenlm_reads_the_arpa_with_the_same_scores(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = write_arpa(estimate_kneser_ney(random_text(200), 3), tmp_path / "lm.arpa")
    arpa = read_arpa(path)
    words = [*arpa_unigrams(path), "zebra"]  # zebra: not in the LM -> <unk>
    index = {w: i for i, w in enumerate(words)}
    kenlm = KenLM(str(path), Dictionary(words))
    state, context = kenlm.start(False), (BOS,)
    for word in ["the", "cat", "zebra", "sat", "far", "far"]:
        state, score = kenlm.score(state, index[word])
        assert score == pytest.approx(arpa.logprob(word, context), abs=1e-5), word
        context += (word,)
    assert kenlm.finish(state)[1] == pytest.approx(arpa.logprob(EOS, context), abs=1e-5)


def test_bad_input_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no words"):
        estimate_kneser_ney(["", "   "], 3)
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\n\\end\\\n")
    with pytest.raises(ValueError, match="bad.arpa:5"):
        read_arpa(bad)
