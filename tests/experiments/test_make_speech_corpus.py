"""experiments/make_speech_corpus.py: a tiny build in LibriSpeech layout, read back by LibriSpeechCorpus."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from datamodules.corpora import LibriSpeechCorpus
from experiments import make_speech_corpus as msc

needs_tools = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                                 reason="espeak-ng and sox are needed to synthesise the corpus")


def speakers_txt(root: Path) -> dict[str, str]:
    """{speaker id: "espeak-ng <accent>+<variant> -p P -s S"} from SPEAKERS.TXT."""
    rows = (root / "LibriSpeech" / "SPEAKERS.TXT").read_text().splitlines()
    return {r.split("|")[0].strip(): r.split("|")[4].strip() for r in rows if not r.startswith(";")}


def variant(name: str) -> str:
    return re.search(r"\+(\S+)", name).group(1)


def test_plans_hold_out_sentences_and_voices():
    prompts = [f"Sentence number {w}." for w in "one two three four five six seven eight nine ten".split()]
    plans = msc.sentence_plans(prompts, seed=0, renditions=2, train_voices=4, dev=2, test=2)
    by_subset: dict[str, list[msc.Plan]] = {}
    for plan in plans:
        by_subset.setdefault(plan.subset, []).append(plan)
    texts = {s: {p.text for p in ps} for s, ps in by_subset.items()}
    assert len(by_subset["train-clean-100"]) == 2 * 6 and len(texts["train-clean-100"]) == 6
    assert texts["dev-clean"] == texts["dev-other"] and texts["test-clean"] == texts["test-other"]
    assert not texts["train-clean-100"] & (texts["dev-clean"] | texts["test-clean"])
    train_variants = {variant(p.speaker.voice) for p in by_subset["train-clean-100"]}
    for subset in ("dev-other", "test-other"):
        held = {variant(p.speaker.voice) for p in by_subset[subset]}
        assert held and not held & train_variants and held <= set(msc.HELD_OUT_FEMALE + msc.HELD_OUT_MALE)
    dev_other = {p.speaker.voice for p in by_subset["dev-other"]}
    assert not dev_other & {p.speaker.voice for p in by_subset["test-other"]}
    assert len({p.uid for p in plans}) == len(plans)  # one file per plan
    assert plans == msc.sentence_plans(prompts, seed=0, renditions=2, train_voices=4, dev=2, test=2)  # seeded


@needs_tools
def test_tiny_sentence_corpus_reads_as_librispeech(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The birch canoe slid on the smooth planks.\nGlue the sheet to the dark blue background.\n"
                       "It's easy to tell the depth of a well.\nRice is often served in round bowls.\n")
    counts = msc.build_corpus(tmp_path / "c", "sentences", renditions=1, train_voices=2, dev=1, test=1,
                              jobs=1, prompts_path=prompts)
    assert counts == {"train-clean-100": 2, "dev-clean": 1, "test-clean": 2, "dev-other": 1, "test-other": 2}
    cuts = LibriSpeechCorpus(tmp_path / "c", list(counts)).cuts(tmp_path / "cache")
    assert len(cuts) == sum(counts.values())
    assert {c.supervisions[0].text for c in cuts} <= {
        "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS", "GLUE THE SHEET TO THE DARK BLUE BACKGROUND",
        "IT'S EASY TO TELL THE DEPTH OF A WELL", "RICE IS OFTEN SERVED IN ROUND BOWLS"}
    assert all(c.sampling_rate == 16000 and 1.0 < c.duration < 6.0 for c in cuts)
    voices = speakers_txt(tmp_path / "c")
    assert {c.supervisions[0].speaker for c in cuts} == set(voices)
    assert all(v.startswith("espeak-ng en") for v in voices.values())


@needs_tools
def test_tiny_word_corpus(tmp_path):
    counts = msc.build_corpus(tmp_path / "w", "words", train_voices=1, dev=1, jobs=2)
    n = len(msc.WORDS)
    assert counts == {"train-clean-100": n, "dev-clean": n, "test-clean": n}
    cuts = LibriSpeechCorpus(tmp_path / "w", list(counts)).cuts(tmp_path / "cache")
    assert {c.supervisions[0].text.lower() for c in cuts} == set(msc.WORDS)
    assert all(0.15 < c.duration < 1.5 for c in cuts)  # isolated words, 0.05 s of silence each side
