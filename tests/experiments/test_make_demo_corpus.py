"""The shipped demo corpus (experiments/demo_corpus) and the script that builds it."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from experiments import make_demo_corpus as mdc

CORPUS = Path(__file__).resolve().parents[2] / "experiments" / "demo_corpus"
SUBSETS = ("train-clean-100", "dev-clean", "test-clean")
CV_SPLITS = ("train", "dev", "test")
TOOLS_MISSING = [t for t in ("espeak-ng", "flite", "sox") if not shutil.which(t)]
if not (shutil.which("lame") or shutil.which("ffmpeg")):
    TOOLS_MISSING.append("lame/ffmpeg")


# ----------------------------------------------------------------------------- readers (assert layout)
def librispeech_index(root: Path) -> dict[str, dict[str, str]]:
    """{subset: {uid: transcript}}; asserts the real layout and that every line has its FLAC and vice versa."""
    index = {}
    for subset in SUBSETS:
        sub = root / "LibriSpeech" / subset
        texts, flacs = {}, set()
        for spk_dir in sorted(p for p in sub.iterdir()):
            assert spk_dir.is_dir() and spk_dir.name.isdigit(), spk_dir
            for chap_dir in spk_dir.iterdir():
                assert chap_dir.is_dir() and chap_dir.name.isdigit(), chap_dir
                prefix = f"{spk_dir.name}-{chap_dir.name}"
                assert {p.name for p in chap_dir.iterdir()} - {f"{prefix}.trans.txt"} == {
                    p.name for p in chap_dir.glob(f"{prefix}-[0-9][0-9][0-9][0-9].flac")
                }, f"unexpected files in {chap_dir}"
                flacs |= {p.stem for p in chap_dir.glob("*.flac")}
                for line in (chap_dir / f"{prefix}.trans.txt").read_text(encoding="utf-8").splitlines():
                    uid, text = line.split(" ", 1)
                    assert uid.startswith(prefix + "-") and uid not in texts, line
                    assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text), line
                    texts[uid] = text
        assert set(texts) == flacs, f"{subset}: transcripts without audio or audio without transcript"
        index[subset] = texts
    return index


def cv_index(root: Path) -> dict[str, list[dict[str, str]]]:
    """{split: rows} of commonvoice/en/*.tsv; asserts 11 columns, QUOTE_NONE parsing and clip coverage."""
    base = root / "commonvoice" / "en"
    index = {}
    for split in (*CV_SPLITS, "validated"):
        with open(base / f"{split}.tsv", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header, *rows = list(reader)
        assert header == mdc.CV_COLUMNS and len(header) == 11
        assert all(len(r) == 11 for r in rows), f"{split}.tsv: row without 11 fields"
        index[split] = [dict(zip(header, r)) for r in rows]
    listed = [r["path"] for s in CV_SPLITS for r in index[s]]
    assert len(listed) == len(set(listed)), "a clip is in two splits"
    assert sorted(listed) == sorted(r["path"] for r in index["validated"])
    assert set(listed) == {p.name for p in (base / "clips").iterdir()}, "clips and TSV rows differ"
    return index


def snapshot(root: Path) -> tuple[list[str], dict, dict]:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return files, librispeech_index(root), cv_index(root)


@pytest.fixture(scope="module")
def ls_index():
    return librispeech_index(CORPUS)


@pytest.fixture(scope="module")
def cv():
    return cv_index(CORPUS)


# ----------------------------------------------------------------------------- shipped corpus
def test_librispeech_counts_and_disjoint_speakers(ls_index):
    assert {s: len(t) for s, t in ls_index.items()} == {"train-clean-100": 120, "dev-clean": 15, "test-clean": 15}
    speakers = {s: {uid.split("-")[0] for uid in t} for s, t in ls_index.items()}
    assert len(speakers["train-clean-100"]) == 6 and len(speakers["dev-clean"]) == 2
    assert not speakers["train-clean-100"] & (speakers["dev-clean"] | speakers["test-clean"])
    speakers_txt = (CORPUS / "LibriSpeech" / "SPEAKERS.TXT").read_text().splitlines()
    assert {line.split("|")[0].strip() for line in speakers_txt if not line.startswith(";")} == set().union(
        *speakers.values()
    )


def test_common_voice_rows(cv):
    assert {s: len(cv[s]) for s in CV_SPLITS} == {"train": 120, "dev": 15, "test": 15}
    rows = [r for s in CV_SPLITS for r in cv[s]]
    assert all(re.fullmatch(r"[0-9a-f]{128}", r["client_id"]) for r in rows)
    assert all(r["locale"] == "en" and r["up_votes"] == "2" and r["down_votes"] == "0" for r in rows)
    assert all(re.fullmatch(r"common_voice_en_\d+\.mp3", r["path"]) for r in rows)
    assert all(r["sentence"][0].isupper() and r["sentence"].endswith(".") for r in rows)
    clients = {s: {r["client_id"] for r in cv[s]} for s in CV_SPLITS}
    assert not clients["train"] & (clients["dev"] | clients["test"]) and not clients["dev"] & clients["test"]


def test_transcripts_come_from_prompts_and_held_out_sentences_differ(ls_index, cv):
    prompts = mdc.load_prompts(CORPUS / "prompts.txt")
    assert len(prompts) == len(set(prompts)) == 270
    upper = {mdc.librispeech_text(p) for p in prompts}
    assert all(t in upper for texts in ls_index.values() for t in texts.values())
    assert all(r["sentence"] in prompts for s in CV_SPLITS for r in cv[s])
    src_train = set(ls_index["train-clean-100"].values())
    src_eval = set(ls_index["dev-clean"].values()) | set(ls_index["test-clean"].values())
    tgt_train = {r["sentence"] for r in cv["train"]}
    tgt_eval = {r["sentence"] for r in cv["dev"] + cv["test"]}
    assert not src_train & src_eval and not tgt_train & tgt_eval
    assert {mdc.librispeech_text(s) for s in tgt_eval} == src_eval  # same held-out sentences in both domains


def test_sample_rates_and_channels():
    flacs = list((CORPUS / "LibriSpeech").rglob("*.flac"))
    mp3s = list((CORPUS / "commonvoice" / "en" / "clips").glob("*.mp3"))
    assert len(flacs) == len(mp3s) == 150
    for p in flacs:
        info = sf.info(p)
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC"), p
        assert 0.5 < info.duration < 6.0, p
    rates = {}
    for p in mp3s:
        info = sf.info(p)
        assert info.channels == 1 and info.format == "MP3" and 0.5 < info.duration < 6.0, p
        rates[info.samplerate] = rates.get(info.samplerate, 0) + 1
    assert set(rates) == {48000, 32000} and rates[48000] > 3 * rates[32000]


def test_total_size_at_most_10_mb():
    sizes = [p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()]
    on_disk = sum(-(-s // 4096) * 4096 for s in sizes)  # what `du` counts with 4 KiB blocks
    assert on_disk <= 10 * 1024 * 1024, f"{on_disk / 2**20:.1f} MiB"


def test_readme_states_licence_and_rebuild_command():
    readme = (CORPUS / "README.md").read_text(encoding="utf-8")
    assert "python experiments/make_demo_corpus.py --out experiments/demo_corpus" in readme
    assert "public domain" in readme.lower()


# ----------------------------------------------------------------------------- script units
def test_librispeech_text():
    assert mdc.librispeech_text("It's easy to tell, the depth.") == "IT'S EASY TO TELL THE DEPTH"


def test_assign_prompts_shares_held_out_and_checks_count():
    prompts = [f"s{i}" for i in range(10)]
    a = mdc.assign_prompts(prompts, train=3, dev=2, test=1)
    assert a[("source", "dev")] == a[("target", "dev")] == ["s0", "s1"]
    assert a[("source", "test")] == ["s2"] and a[("source", "train")] == ["s3", "s4", "s5"]
    assert a[("target", "train")] == ["s6", "s7", "s8"]
    with pytest.raises(ValueError, match="11 prompts needed"):
        mdc.assign_prompts(prompts, train=4, dev=2, test=1)


def test_select_prompts_filters_and_is_seeded():
    sents = ["A cat sat.", "Four 4 dogs.", "A well-known man.", "The sun is hot, yes.", "x" * 50]
    assert sorted(mdc.select_prompts(sents, 2)) == ["A cat sat.", "The sun is hot, yes."]
    with pytest.raises(ValueError, match="only 2 sentences"):
        mdc.select_prompts(sents, 3)


def test_add_noise_hits_snr_and_peak():
    t = np.arange(16000) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    bed = np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    mixed = mdc.add_noise(speech, bed, 15.0, mdc.random.Random(0))
    scale = float(mixed @ speech / (speech @ speech))
    residual = mixed - scale * speech
    snr = 20 * np.log10(np.linalg.norm(scale * speech) / np.linalg.norm(residual))
    assert abs(snr - 15.0) < 0.3 and np.isclose(np.abs(mixed).max(), 0.89, atol=1e-6)
    with pytest.raises(ValueError, match="shorter than utterance"):
        mdc.add_noise(speech, bed[:100], 15.0, mdc.random.Random(0))


def test_missing_tools_error_names_them(monkeypatch):
    monkeypatch.setattr(mdc.shutil, "which", lambda name: None if name in ("flite", "lame", "ffmpeg") else "/x")
    with pytest.raises(mdc.MissingToolError, match=r"flite, lame \(or ffmpeg\)"):
        mdc.check_tools()


@pytest.mark.skipif(bool(TOOLS_MISSING), reason=f"synthesis tools not installed: {TOOLS_MISSING}")
def test_script_builds_small_corpus_deterministically(tmp_path, ls_index):
    out = tmp_path / "corpus"
    mdc.main(["--out", str(out), "--per-split", "2", "2", "2"])
    first = snapshot(out)
    assert {s: len(t) for s, t in first[1].items()} == dict.fromkeys(SUBSETS, 2)
    assert {s: len(first[2][s]) for s in CV_SPLITS} == dict.fromkeys(CV_SPLITS, 2)
    assert (out / "prompts.txt").read_text() == (CORPUS / "prompts.txt").read_text()
    stale = out / "LibriSpeech" / "dev-clean" / "9" / "9" / "9-9-0000.flac"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    mdc.build_corpus(out, (2, 2, 2))  # a rebuild replaces what it owns and repeats itself
    assert not stale.exists() and snapshot(out) == first
    # the shipped corpus was built with the same prompts: its first utterances match
    assert first[1]["dev-clean"]["2001-6001-0000"] == ls_index["dev-clean"]["2001-6001-0000"]
