"""What the user sees (issue 11, item 13): a corpus error is at most 5 lines (file, reason, detail, what to
do), not a jsonargparse link traceback; the decoder's reason is complete. (Checkpoint messages:
``tests/lightning_modules/test_checkpoint_io.py``.)"""

from __future__ import annotations

import pytest

from datamodules.errors import BadInputError
from experiments.errors import user_error_lines
from tests.cli_helpers import run_cli, tiny_quickstart


@pytest.mark.slow
def test_a_corrupt_training_file_is_five_lines_not_a_traceback(tmp_path):
    config = tiny_quickstart(tmp_path / "work")
    flac = sorted((tmp_path / "work/tiny_corpus/LibriSpeech/train-clean-100").rglob("*.flac"))[0]
    flac.write_bytes(flac.read_bytes()[:4] + bytes(4000))
    proc = run_cli(["fit", "--config", config, "--runs_dir", tmp_path / "runs", "--wandb", "false"], cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("speechxfer:", "  "))]
    assert "Traceback" not in proc.stderr and "compute_fn" not in proc.stderr
    assert lines == [
        f"speechxfer: bad input: {flac}",
        "  reason: unreadable_audio",
        f"  detail: LibsndfileError: Error opening '{flac}': File contains data in an unimplemented format.",
        "  to skip and count such items instead: on_bad_input: skip in the data config",
        "  (e.g. --data.init_args.on_bad_input skip)",
    ]


def test_bad_input_raised_in_a_dataloader_worker_is_short_too():
    worker_text = ("Caught BadInputError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                   '  File "x.py", line 1, in f\n'
                   "datamodules.errors.BadInputError: /d/a.flac: audio_decode_failed: utterance 'a': lost sync")
    lines = user_error_lines(RuntimeError(worker_text))
    assert lines[0] == "speechxfer: bad input: /d/a.flac: audio_decode_failed: utterance 'a': lost sync"
    assert len(lines) <= 5


def test_other_errors_keep_their_traceback():
    assert user_error_lines(ZeroDivisionError("x")) is None
    wrapped = ValueError("Call to compute_fn of link failed")
    wrapped.__cause__ = BadInputError("/d/b.flac", "empty_audio", "audio has 0 samples")
    assert user_error_lines(wrapped)[:3] == ["speechxfer: bad input: /d/b.flac", "  reason: empty_audio",
                                            "  detail: audio has 0 samples"]
