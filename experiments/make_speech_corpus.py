"""Build a synthesised multi-voice English corpus (espeak-ng only) in LibriSpeech layout.

    python experiments/make_speech_corpus.py --out data/synth_en                  # sentences: the source model's corpus
    python experiments/make_speech_corpus.py --out data/synth_words --kind words  # isolated words: the recipe study

A "voice" is an espeak-ng accent + variant (``en-gb-scotland+f3``, ``en-us+klatt2``, ...) with its own
pitch (``-p``) and speed (``-s``, words per minute). Variants are split into TRAINING variants and
HELD-OUT variants that no training utterance uses, so "held-out voices" are voices the model never heard.

``--kind sentences`` (the 720 Harvard sentences of ``experiments/prompts/harvard-sentences.txt``):

    train-clean-100  training sentences, each read by ``--renditions`` different training voices
    dev-clean        held-out sentences (dev), read by training voices        (unseen sentences)
    test-clean       held-out sentences (test), read by training voices       (unseen sentences)
    dev-other        held-out dev sentences, read by held-out voices          (unseen voices + sentences)
    test-other       held-out test sentences, read by other held-out voices   (unseen voices + sentences)

The demo corpus's dev/test sentences (``--exclude-demo``, on by default) are left out entirely, so a
source model trained here is never scored on a sentence it trained on when evaluated on the demo corpus.
``<out>/noise/`` gets 30 s each of white, pink and brown noise (sox) for ``WaveformAugmentation(noise=...)``.

``--kind words`` (``WORDS``: 20 command/digit words, clips of ~0.3-0.7 s like keyword corpora):
every voice says every word once; train / dev / test voices are disjoint (train-clean-100, dev-clean,
test-clean).

Audio: 16 kHz mono 16-bit FLAC, silence trimmed, ``--pad`` s of silence each side, -3 dBFS peak
(``make_demo_corpus.synth_source``); transcripts LibriSpeech style (UPPERCASE); ``SPEAKERS.TXT`` names
each voice's espeak-ng settings. Seeded: reruns give the same files and transcripts. Synthesis runs
``--jobs`` espeak-ng/sox subprocesses at a time (sentences, default size: ~5,000 utterances, 3.6 h of
audio, ~4 min with 2 jobs; words: 800 clips, ~10 s).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import soundfile as sf

from experiments.make_demo_corpus import (
    DEFAULT_PROMPTS,
    EspeakSpeaker,
    MissingToolError,
    librispeech_text,
    load_prompts,
    run,
    synth_source,
    write_speakers_txt,
)

log = logging.getLogger("make_speech_corpus")

HARVARD = Path(__file__).resolve().parent / "prompts" / "harvard-sentences.txt"
DEMO_EVAL_SENTENCES = 30  # the demo corpus's dev + test sentences: the first 30 of its prompts.txt
NOISES = ("whitenoise", "pinknoise", "brownnoise")
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
FEMALE = ["f1", "f2", "f3", "f5", "Alicia", "Andrea", "aunty", "linda", "steph", "steph2", "anika", "anikaRobot",
          "whisperf"]
MALE = ["m1", "m2", "m3", "m4", "m5", "m7", "m8", "Alex", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene",
        "Gene2", "Hugo", "Jacky", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "RicishayMax2",
        "Storm", "Tweaky", "UniRobot", "adam", "announcer", "antonio", "benjamin", "boris", "caleb", "croak", "david",
        "ed", "edward", "edward2", "fast", "grandpa", "gustave", "iven", "iven2", "john", "kaukovalta", "klatt",
        "klatt2", "klatt3", "klatt5", "marcelo", "max", "michel", "miguel", "pablo", "paul", "pedro", "quincy",
        "rob", "robert", "robosoft", "robosoft2", "robosoft4", "robosoft6", "sandro", "shelby", "victor", "whisper",
        "zac"]
# Never used for training: whole variant families (klatt4 is a Klatt-synthesis voice like klatt/klatt2/...).
HELD_OUT_FEMALE = ["f4", "Annie", "belinda", "steph3", "grandma"]
HELD_OUT_MALE = ["m6", "Andy", "Henrique", "Lee", "travis", "norbert", "klatt4"]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CHAPTERS = {"train-clean-100": 1, "dev-clean": 2, "test-clean": 3, "dev-other": 4, "test-other": 5}  # ids unique


@dataclass(frozen=True)
class Plan:
    """One utterance to synthesise: subset, voice, utterance number within the voice's chapter, text."""

    subset: str
    speaker: EspeakSpeaker
    index: int
    text: str

    @property
    def uid(self) -> str:
        return f"{self.speaker.speaker_id}-{self.speaker.chapter_id}-{self.index:04d}"

    def flac(self, root: Path) -> Path:
        spk = self.speaker
        return root / "LibriSpeech" / self.subset / str(spk.speaker_id) / str(spk.chapter_id) / f"{self.uid}.flac"


class VoiceFactory:
    """Random voices (accent + variant, pitch, speed) with unique speaker ids, from a seeded RNG."""

    def __init__(self, rng: random.Random, speed: tuple[int, int], pitch: tuple[int, int] = (25, 75)) -> None:
        self.rng, self.speed, self.pitch = rng, speed, pitch
        self.next_id = 100

    def voice(self, variant: str, accent: str | None = None) -> EspeakSpeaker:
        accent = accent or self.rng.choice(ACCENTS)
        sex = "F" if variant in FEMALE + HELD_OUT_FEMALE else "M"
        spk = EspeakSpeaker(self.next_id, 0, f"{accent}+{variant}", self.rng.randint(*self.pitch),
                            self.rng.randint(*self.speed), sex)
        self.next_id += 1
        return spk

    def voices(self, variants: list[str], n: int) -> list[EspeakSpeaker]:
        """``n`` voices cycling through the (shuffled) ``variants``."""
        order = self.rng.sample(variants, len(variants))
        return [self.voice(order[i % len(order)]) for i in range(n)]


def assign(subset: str, texts: list[str], voices: list[EspeakSpeaker], renditions: int,
           rng: random.Random, counters: dict) -> list[Plan]:
    """Each text read by ``renditions`` distinct voices, spreading the load evenly over ``voices``.

    A voice's utterances in ``subset`` form its chapter ``CHAPTERS[subset]``, so utterance ids stay unique
    when a voice reads in several subsets."""
    voices = [replace(v, chapter_id=CHAPTERS[subset]) for v in voices]
    plans, load = [], {v: 0 for v in voices}
    for text in texts:
        pool = sorted(voices, key=lambda v: (load[v], rng.random()))[:renditions]
        for spk in pool:
            load[spk] += 1
            key = (subset, spk)
            plans.append(Plan(subset, spk, counters[key], text))
            counters[key] += 1
    return plans


def sentence_plans(prompts: list[str], seed: int, renditions: int, train_voices: int, dev: int, test: int,
                   exclude: list[str] = ()) -> list[Plan]:
    """Plans for ``--kind sentences`` (see module docstring); ``exclude``d sentences are not used at all."""
    rng = random.Random(seed)
    excluded = {librispeech_text(e) for e in exclude}
    prompts = [p for p in prompts if librispeech_text(p) not in excluded]
    order = rng.sample(prompts, len(prompts))
    dev_s, test_s, train_s = order[:dev], order[dev:dev + test], order[dev + test:]
    factory = VoiceFactory(rng, speed=(130, 210))
    train_v = factory.voices(FEMALE + MALE, train_voices)
    held = rng.sample(HELD_OUT_FEMALE + HELD_OUT_MALE, len(HELD_OUT_FEMALE + HELD_OUT_MALE))
    split = len(held) // 3  # a third of the held-out variants for dev-other, the rest for test-other
    dev_other = [factory.voice(v) for v in held[:split] for _ in range(2)]
    test_other = [factory.voice(v) for v in held[split:] for _ in range(2)]
    counters: dict = defaultdict(int)
    return (assign("train-clean-100", train_s, train_v, renditions, rng, counters)
            + assign("dev-clean", dev_s, train_v, 1, rng, counters)
            + assign("test-clean", test_s, train_v, 2, rng, counters)
            + assign("dev-other", dev_s, dev_other, 1, rng, counters)
            + assign("test-other", test_s, test_other, 2, rng, counters))


def word_plans(words: list[str], seed: int, train_voices: int, eval_voices: int) -> list[Plan]:
    """Plans for ``--kind words``: every voice says every word; train/dev/test voices disjoint."""
    rng = random.Random(seed)
    factory = VoiceFactory(rng, speed=(130, 230))
    held = HELD_OUT_FEMALE + HELD_OUT_MALE
    train_v = factory.voices(FEMALE + MALE, train_voices)
    dev_v = factory.voices(held, eval_voices)
    test_v = factory.voices(held, eval_voices)
    counters: dict = defaultdict(int)
    plans = []
    for subset, voices in (("train-clean-100", train_v), ("dev-clean", dev_v), ("test-clean", test_v)):
        plans += assign(subset, words, voices, len(voices), rng, counters)
    return plans


def synthesise(plans: list[Plan], out: Path, pad: float, jobs: int) -> dict[int, float]:
    """Write every plan's FLAC (``jobs`` at a time) and the trans.txt files; returns minutes per speaker."""
    with tempfile.TemporaryDirectory(prefix="speech_corpus_") as tmp:
        def one(i_plan: tuple[int, Plan]) -> float:
            i, plan = i_plan
            flac = plan.flac(out)
            flac.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tmp) / str(i)  # this task's temp files
            work.mkdir()
            synth_source(plan.text, plan.speaker, flac, work, pad)
            shutil.rmtree(work)
            return sf.info(flac).duration

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            durations = list(pool.map(one, enumerate(plans)))
    minutes: dict[int, float] = defaultdict(float)
    chapters: dict[Path, list[str]] = defaultdict(list)
    for plan, seconds in zip(plans, durations):
        minutes[plan.speaker.speaker_id] += seconds / 60
        chapters[plan.flac(out).parent].append(f"{plan.uid} {librispeech_text(plan.text)}")
    for folder, lines in chapters.items():
        spk, chap = folder.parent.name, folder.name
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    return dict(minutes)


def write_noise(out: Path, seconds: int = 30) -> list[Path]:
    """``out/noise/<kind>.flac``: 16 kHz mono sox noise (repeatable), -6 dBFS, one file per kind of ``NOISES``."""
    (out / "noise").mkdir(parents=True, exist_ok=True)
    files = [out / "noise" / f"{kind}.flac" for kind in NOISES]
    for kind, path in zip(NOISES, files):
        run(["sox", "-R", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", str(seconds), kind,
             "norm", "-6"])
    return files


def build_corpus(out: Path, kind: str = "sentences", seed: int = 0, renditions: int = 8, train_voices: int = 160,
                 dev: int = 40, test: int = 60, pad: float | None = None, jobs: int = 2,
                 prompts_path: Path = HARVARD, exclude: list[str] = ()) -> dict[str, int]:
    """Build ``out/LibriSpeech`` (replaced if present) and ``out/noise``; returns utterances per subset."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        raise MissingToolError("make_speech_corpus needs espeak-ng and sox on PATH "
                               "(Debian/Ubuntu: apt-get install espeak-ng sox)")
    if kind == "sentences":
        plans = sentence_plans(load_prompts(prompts_path), seed, renditions, train_voices, dev, test, exclude)
        pad = 0.1 if pad is None else pad
    elif kind == "words":
        plans = word_plans(WORDS, seed, train_voices, max(dev, 1))
        pad = 0.05 if pad is None else pad
    else:
        raise ValueError(f"kind must be 'sentences' or 'words', got {kind!r}")
    out = Path(out)
    shutil.rmtree(out / "LibriSpeech", ignore_errors=True)
    minutes = synthesise(plans, out, pad, jobs)
    speakers: dict[str, list[EspeakSpeaker]] = defaultdict(list)
    for plan in plans:
        if plan.speaker not in speakers[plan.subset]:
            speakers[plan.subset].append(plan.speaker)
    write_speakers_txt(out / "LibriSpeech" / "SPEAKERS.TXT", minutes, speakers, title=f"speechxfer {kind} corpus")
    write_noise(out)
    counts: dict[str, int] = defaultdict(int)
    for plan in plans:
        counts[plan.subset] += 1
    return dict(counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="corpus root (LibriSpeech/ is written inside)")
    parser.add_argument("--kind", choices=("sentences", "words"), default="sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renditions", type=int, default=8, help="sentences: voices per training sentence")
    parser.add_argument("--train-voices", type=int, default=None,
                        help="training voices (default: 160 for sentences, 30 for words)")
    parser.add_argument("--dev", type=int, default=None,
                        help="sentences: held-out dev sentences (default 40); words: voices per eval split (5)")
    parser.add_argument("--test", type=int, default=60, help="sentences: held-out test sentences")
    parser.add_argument("--pad", type=float, default=None, help="silence each side, s (sentences 0.1, words 0.05)")
    parser.add_argument("--prompts", type=Path, default=HARVARD, help="sentences, one per line")
    parser.add_argument("--jobs", type=int, default=2, help="synthesis subprocesses at a time")
    parser.add_argument("--exclude-demo", action=argparse.BooleanOptionalAction, default=True,
                        help="sentences: leave out the demo corpus's dev/test sentences (default: yes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    words = args.kind == "words"
    counts = build_corpus(args.out, args.kind, args.seed, args.renditions,
                          args.train_voices or (30 if words else 160), args.dev or (5 if words else 40),
                          args.test, args.pad, args.jobs, args.prompts,
                          load_prompts(DEFAULT_PROMPTS)[:DEMO_EVAL_SENTENCES] if args.exclude_demo else [])
    log.info("done: %s -> %s", counts, args.out / "LibriSpeech")


if __name__ == "__main__":
    main()
