"""Word n-gram language models in ARPA format, estimated offline in pure Python.

    model = estimate_kneser_ney(["the cat sat", "the dog ran"], order=3)   # sentences of words
    write_arpa(model, "lm/lm.arpa")                                           # atomic write
    arpa = read_arpa("lm/lm.arpa"); arpa.logprob("cat", ("<s>", "the"))      # log10 P(cat | <s> the)

Estimator: interpolated modified Kneser-Ney (Chen & Goodman 1998, as KenLM's ``lmplz``). Every
sentence is ``<s> w1 .. wn </s>``; the highest order uses raw counts, lower orders continuation counts
(number of distinct left neighbours), except n-grams starting with ``<s>``, which keep raw counts
(nothing can precede them). Per order k, three discounts D1, D2, D3+ come from the count-of-counts
n1..n4 of those adjusted counts: ``Y = n1/(n1+2 n2)``, ``D_r = r - (r+1) Y n_{r+1}/n_r``; an
estimate that is undefined or outside (0, r) (tiny texts: e.g. no n-gram seen twice) falls back to
``FALLBACK_DISCOUNTS``. Then::

    p(w | h) = (a(h w) - D(a(h w))) / a(h) + gamma(h) p(w | h[1:])        gamma(h) = sum_w D(a(h w)) / a(h)

and the unigram level interpolates with the uniform distribution over the predicted vocabulary
(every word, ``</s>`` and ``<unk>``; ``<s>`` is never predicted: log10 prob -99). In ARPA back-off
form the stored probability of a seen n-gram is its interpolated ``p(w | h)`` and the back-off weight
of a context is ``gamma(h)``, so ``sum_w p(w | h) = 1`` for every context (tested).

Counts live in Python dicts: fine for training transcripts (millions of words); for web-scale text
build the ARPA with KenLM's ``lmplz`` and pass it to the decoder instead.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.atomic import atomic_write

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # D1, D2, D3+ when the count-of-counts cannot estimate them
NEVER = -99.0  # log10 "probability" ARPA files give <s>
Ngram = tuple[str, ...]


@dataclass
class NgramModel:
    """log10 probabilities and back-off weights per order (index 0 = unigrams), plus the discounts used."""

    order: int
    logprobs: list[dict[Ngram, float]]
    backoffs: list[dict[Ngram, float]]
    discounts: list[tuple[float, float, float]] = field(default_factory=list)

    def vocabulary(self) -> list[str]:
        """Every unigram but ``<s>``, ``</s>``, ``<unk>``, in ARPA order."""
        return [g[0] for g in self.logprobs[0] if g[0] not in (BOS, EOS, UNK)]


def sentence_words(sentences: Iterable[str]) -> Iterator[list[str]]:
    """Whitespace-split words of every non-empty sentence (text is expected to be normalised already)."""
    for text in sentences:
        words = text.split()
        if words:
            yield words


def count_ngrams(sentences: Iterable[list[str]], order: int) -> list[Counter]:
    """Raw counts of every k-gram, k = 1..order, of ``<s> words </s>`` (index k-1)."""
    counts = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for k in range(1, order + 1):
            grams = counts[k - 1]
            for i in range(len(padded) - k + 1):
                grams[padded[i:i + k]] += 1
    return counts


def adjusted_counts(raw: list[Counter]) -> list[Counter]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>; else continuation counts."""
    order = len(raw)
    adjusted = [Counter() for _ in range(order)]
    adjusted[-1] = Counter(raw[-1])
    for k in range(order - 1, 0, -1):  # order k (1-based) from the distinct left extensions at k+1
        lower = adjusted[k - 1]
        for gram in raw[k]:
            lower[gram[1:]] += 1
        for gram, count in raw[k - 1].items():
            if gram[0] == BOS:
                lower[gram] = count
    return adjusted


def discounts(counts: Counter) -> tuple[float, float, float]:
    """Modified Kneser-Ney D1, D2, D3+ of one order (see module docstring for the fallback)."""
    n = Counter(min(c, 4) for c in counts.values())
    estimates = []
    for r in (1, 2, 3):
        try:
            y = n[1] / (n[1] + 2 * n[2])
            d = r - (r + 1) * y * n[r + 1] / n[r]
        except ZeroDivisionError:
            d = math.nan
        estimates.append(d if 0 < d < r else FALLBACK_DISCOUNTS[r - 1])
    return tuple(estimates)


def _discount(d: tuple[float, float, float], count: int) -> float:
    return d[min(count, 3) - 1]


def estimate_kneser_ney(sentences: Iterable[str], order: int = 3) -> NgramModel:
    """Interpolated modified Kneser-Ney n-gram model of ``sentences`` (strings of space-separated words)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    raw = count_ngrams(sentence_words(sentences), order)
    if not raw[0]:
        raise ValueError("no words in the LM text (every sentence was empty)")
    counts = adjusted_counts(raw)
    counts[0].pop((BOS,), None)  # never predicted: not part of the unigram distribution
    counts[0][(UNK,)] = 0
    logprobs: list[dict[Ngram, float]] = []
    backoffs: list[dict[Ngram, float]] = [dict() for _ in range(order)]
    used = []
    lower: dict[Ngram, float] = {}
    for k in range(1, order + 1):
        d = discounts(Counter({g: c for g, c in counts[k - 1].items() if c > 0}))
        used.append(d)
        total: dict[Ngram, int] = defaultdict(int)
        mass: dict[Ngram, float] = defaultdict(float)
        for gram, c in counts[k - 1].items():
            total[gram[:-1]] += c
            if c > 0:
                mass[gram[:-1]] += _discount(d, c)
        gamma = {h: mass[h] / total[h] for h in total}
        probs = {}
        for gram, c in counts[k - 1].items():
            h = gram[:-1]
            alpha = max(c - _discount(d, c), 0.0) / total[h] if c > 0 else 0.0
            below = 1.0 / len(counts[0]) if k == 1 else 10.0 ** lower[gram[1:]]
            probs[gram] = math.log10(alpha + gamma[h] * below)
        if k > 1:
            backoffs[k - 2] = {h: math.log10(g) for h, g in gamma.items() if g > 0}
        logprobs.append(probs)
        lower = probs
    logprobs[0] = {(BOS,): NEVER, **logprobs[0]}
    return NgramModel(order, logprobs, backoffs, used)


def write_arpa(model: NgramModel, path: str | Path) -> Path:
    """The model as an ARPA text file (atomic write); n-grams sorted within each order."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for k, probs in enumerate(model.logprobs, start=1):
                f.write(f"ngram {k}={len(probs)}\n")
            for k, probs in enumerate(model.logprobs, start=1):
                f.write(f"\n\\{k}-grams:\n")
                backoff = model.backoffs[k - 1]
                for gram in sorted(probs):
                    line = f"{probs[gram]:.6f}\t{' '.join(gram)}"
                    if k < model.order:
                        line += f"\t{backoff.get(gram, 0.0):.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")

    return atomic_write(path, write)


@dataclass
class ArpaLM:
    """An ARPA model read back into dicts; ``logprob`` applies the standard back-off rule."""

    order: int
    logprobs: dict[Ngram, float]
    backoffs: dict[Ngram, float]

    def logprob(self, word: str, context: Ngram = ()) -> float:
        """log10 P(word | context); words outside the model are scored as ``<unk>`` (-inf without one)."""
        if (word,) not in self.logprobs:
            if (UNK,) not in self.logprobs:
                return -math.inf
            word = UNK
        context = tuple(context)[max(0, len(context) - self.order + 1):] if self.order > 1 else ()
        penalty = 0.0
        while (*context, word) not in self.logprobs:  # ends: (word,) is a unigram
            penalty += self.backoffs.get(context, 0.0)
            context = context[1:]
        return penalty + self.logprobs[(*context, word)]

    def vocabulary(self) -> list[str]:
        return [g[0] for g in self.logprobs if len(g) == 1]


def read_arpa(path: str | Path) -> ArpaLM:
    """Parse an ARPA file; raises ``ValueError`` naming the file and line on malformed input."""
    logprobs: dict[Ngram, float] = {}
    backoffs: dict[Ngram, float] = {}
    order, section = 0, 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("ngram ") or line in ("\\data\\", "\\end\\"):
                continue
            if line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-")[0])
                order = max(order, section)
                continue
            fields = line.split()  # "log10p w1 .. wk [backoff]", tab- or space-separated
            if section == 0 or len(fields) not in (section + 1, section + 2):
                raise ValueError(f"{path}:{number}: not an ARPA {section}-gram line: {line[:80]!r}")
            words = tuple(fields[1:section + 1])
            logprobs[words] = float(fields[0])
            if len(fields) == section + 2:
                backoffs[words] = float(fields[-1])
    if order == 0:
        raise ValueError(f"{path}: no n-gram sections (not an ARPA file?)")
    return ArpaLM(order, logprobs, backoffs)


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's 1-gram section (streamed: the higher orders are not read)."""
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                words.append(line.split()[1])
    if not words:
        raise ValueError(f"{path}: no 1-gram section (an ARPA text file is needed here)")
    return words
