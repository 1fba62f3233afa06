"""``speechxfer transcribe``: the checkpoint alone (no config, any cwd), one line per file, clear errors.

The model is the 2-step quickstart checkpoint (``tests.cli_helpers.shared_quickstart_run``): its text
is gibberish, but it must be exactly what ``load_model(ckpt).transcribe`` gives for each file alone,
read the way training reads it (``SpeechDataset``), and what ``speechxfer test`` decodes for the
same files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet

from datamodules import errors as E
from datamodules.dataset import SpeechDataset
from datamodules.probe import audio_file_cut
from experiments.cli import build_cli, main
from lightning_modules import load_model
from tests.cli_helpers import REPO, callbacks_yaml, cli_env, in_process_cli, load_ckpt, shared_quickstart_run
from tests.corpus_factory import make_librispeech, tone_speech

REAL_SPEECH = REPO / "tests" / "fixtures" / "real_speech"
AUDIO_SUFFIXES = {".flac", ".wav", ".mp3", ".ogg"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The quickstart checkpoint, alone in an empty folder, its CTC head randomised (seeded).

    After 2 training steps the model emits (almost) only blanks; a random head makes every
    transcript depend on the audio features, so equal transcripts mean equal computations.
    """
    checkpoint = load_ckpt(shared_quickstart_run(tmp_path_factory) / "checkpoints" / "last.ckpt")
    generator = torch.Generator().manual_seed(0)
    for name, value in checkpoint["state_dict"].items():
        if name.startswith("head.") and value.is_floating_point():
            checkpoint["state_dict"][name] = torch.randn(value.shape, generator=generator)
    target = tmp_path_factory.mktemp("ckpt_only") / "model.ckpt"
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    """A 16 kHz FLAC, and a folder with a stereo 22.05 kHz WAV, a nested 48 kHz MP3 and a non-audio file."""
    root = tmp_path_factory.mktemp("audio")
    (root / "folder" / "sub").mkdir(parents=True)
    folder = root / "folder"
    files = {"flac": root / "one.flac", "wav": folder / "two.wav", "mp3": folder / "sub" / "three.mp3"}
    sf.write(files["flac"], tone_speech("the big dog"), 16000)
    left = tone_speech("a red box", 22050, seed=1)
    sf.write(files["wav"], np.stack([left, 0.5 * left], axis=1), 22050)
    sf.write(files["mp3"], tone_speech("sun", 48000, seed=2), 48000)
    (root / "folder" / "notes.txt").write_text("not audio")
    return {**files, "folder": root / "folder"}


def direct_transcript(model, path: Path) -> str:
    """``model.transcribe`` on one file alone, read as training reads it (16 kHz, channels averaged)."""
    batch = SpeechDataset(labels=False)[CutSet.from_cuts([audio_file_cut(str(path), E.BadInputPolicy("error", "t"))])]
    return model.transcribe(batch["audio"], batch["lengths"])[0]


def parse(stdout: str) -> list[tuple[str, str]]:
    return [tuple(line.split("\t", 1)) for line in stdout.splitlines() if line.strip()]


def test_console_command_from_checkpoint_alone(ckpt, model, audio, tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    command = [shutil.which("speechxfer")] if shutil.which("speechxfer") else [sys.executable, "-m", "experiments"]
    env = cli_env()
    env.pop("PYTHONPATH")  # the installed command alone
    proc = subprocess.run([*command, "transcribe", "--ckpt", str(ckpt), str(audio["flac"]), str(audio["folder"])],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = parse(proc.stdout)
    expected = [audio["flac"], audio["mp3"], audio["wav"]]  # as given; the folder expanded recursively, sorted
    assert [Path(p) for p, _ in lines] == expected
    assert [text for _, text in lines] == [direct_transcript(model, p) for p in expected]
    assert all(text.strip() for _, text in lines), "non-trivial transcripts"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.ckpt"], "nothing written next to the checkpoint"


def test_batching_does_not_change_transcripts(ckpt, model, audio, capsys):
    files = [str(audio[k]) for k in ("flac", "wav", "mp3")]
    assert main(["transcribe", "--ckpt", str(ckpt), "--max-seconds", "0.5", *files]) == 0  # one file per batch
    one_by_one = parse(capsys.readouterr().out)
    assert main(["transcribe", "--ckpt", str(ckpt), *files]) == 0  # one padded batch
    together = parse(capsys.readouterr().out)
    assert one_by_one == together == [(f, direct_transcript(model, Path(f))) for f in files]


def test_unreadable_files_are_named_and_exit_1(ckpt, audio, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    missing = tmp_path / "missing.mp3"
    args = ["transcribe", "--ckpt", str(ckpt), str(audio["flac"]), str(corrupt), str(empty), str(missing)]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert [p for p, _ in parse(out)] == [str(audio["flac"])], "readable files are still transcribed"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3
    for path, reason in ((corrupt, E.UNREADABLE_AUDIO), (empty, E.EMPTY_AUDIO), (missing, E.MISSING_FILE)):
        assert any(str(path) in line and reason in line for line in errors), (path, err)


def test_real_recordings(ckpt, capsys):
    expected = sorted(p for p in REAL_SPEECH.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    assert len(expected) >= 3
    assert main(["transcribe", "--ckpt", str(ckpt), str(REAL_SPEECH)]) == 0
    lines = parse(capsys.readouterr().out)
    assert [Path(p) for p, _ in lines] == expected
    assert all(text.strip() for _, text in lines)


def test_transcribe_and_test_decode_the_same_files_identically(ckpt, tmp_path_factory, tmp_path, capsys, caplog):
    """One inference path: ``speechxfer test`` on a corpus and ``speechxfer transcribe`` on its files give
    the same transcript per utterance -- stereo files (16 and 22.05 kHz) included, downmixed in both."""
    root = make_librispeech(tmp_path / "data", {"test-clean": 4})
    flacs = sorted((root / "LibriSpeech" / "test-clean").rglob("*.flac"))
    mono, rate = sf.read(flacs[0], dtype="float32")
    assert rate == 16000
    sf.write(flacs[0], np.stack([mono, 0.25 * mono], axis=1), 16000)
    trans = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for t in flacs[1].parent.glob("*.trans.txt")
             for line in t.read_text().splitlines()}
    wave = tone_speech(trans[flacs[1].stem].lower(), 22050, seed=5)
    sf.write(flacs[1], np.stack([wave, 0.5 * wave], axis=1), 22050)
    run_config = shared_quickstart_run(tmp_path_factory) / "config.yaml"
    corpus = {"class_path": "datamodules.LibriSpeechCorpus",
              "init_args": {"root": str(root), "subsets": ["test-clean"], "on_bad_input": "error"}}
    recorded = tmp_path / "test_transcripts.json"
    recorder = callbacks_yaml(tmp_path / "recorder.yaml", [
        {"class_path": "tests.cli_helpers.TranscriptRecorder", "init_args": {"path": str(recorded)}}])
    with in_process_cli(cwd=REPO), caplog.at_level(logging.WARNING, logger="datamodules"):  # demo corpus: repo-relative
        build_cli(["test", "--config", str(run_config), "--config", str(recorder),
                   "--ckpt_path", str(ckpt), "--data.init_args.test", json.dumps({"source": corpus}),
                   "--runs_dir", str(tmp_path / "runs"), "--wandb", "false"])
    tested = json.loads(recorded.read_text())
    assert sorted(tested) == sorted(p.stem for p in flacs)
    capsys.readouterr()  # the test run's metrics table
    assert any("multichannel_audio=2" in r.getMessage() for r in caplog.records)  # test: the same counted note
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        assert main(["transcribe", "--ckpt", str(ckpt), *map(str, flacs)]) == 0
    transcribed = {Path(path).stem: text for path, text in parse(capsys.readouterr().out)}
    assert transcribed == tested
    assert any(t.strip() for t in tested.values()), "non-trivial transcripts"
    notes = [r.getMessage() for r in caplog.records if "multichannel_audio=2" in r.getMessage()]
    assert len(notes) == 1 and str(flacs[0]) in notes[0]  # the downmix is a counted, logged note, as in training
