"""Checkpoint files (issue 11, items 2, 13, 19): atomic writes on any file system, finite weights only,
weights-only loads everywhere (``load_model``, ``CheckpointBackbone``, ``transcribe``, resume), and the
clear message of a refused or corrupt checkpoint.

The write tests run the CheckpointIO of the Trainer the CLI builds, with ``TMPDIR`` on another file
system than the checkpoint folder (``/dev/shm`` vs the test's tmp dir: the cluster case of a run dir on
NFS/Lustre/a data disk), and a disk that fills up halfway through whatever write or copy comes.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from experiments.cli import build_cli
from lightning_modules import load_model
from lightning_modules.backbones import CheckpointBackbone
from tests.cli_helpers import EXPERIMENTS, REPO, cli_env, in_process_cli, shared_quickstart_run

OTHER_FS = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not OTHER_FS.is_dir(), reason="needs /dev/shm (a second file system) for TMPDIR")


@pytest.fixture
def other_fs_tmpdir(monkeypatch, tmp_path):
    """``TMPDIR`` on a different file system than ``tmp_path`` (moves become copies); its leftovers checked."""
    tmpdir = Path(tempfile.mkdtemp(dir=OTHER_FS, prefix="speechxfer-test-"))
    assert os.stat(tmpdir).st_dev != os.stat(tmp_path).st_dev
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    yield tmpdir
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def cli_checkpoint_io(tmp_path_factory):
    """The CheckpointIO of the Trainer ``speechxfer fit --config experiments/quickstart.yaml`` builds."""
    runs = tmp_path_factory.mktemp("io_runs")
    with in_process_cli():
        cli = build_cli(["--config", str(EXPERIMENTS / "quickstart.yaml"), "--runs_dir", str(runs),
                         "--wandb", "false"], run=False)
    return cli.trainer.strategy.checkpoint_io


def checkpoint(value: float, n: int = 1 << 20) -> dict:
    return {"state_dict": {"w": torch.full((n,), value)}, "global_step": int(value)}


class DiskFull:
    """Every write to a real file stops with ENOSPC after half its bytes (torch.save into a file, a copy)."""

    def __init__(self, monkeypatch) -> None:
        real_save, real_sendfile, real_copyfileobj = torch.save, os.sendfile, shutil.copyfileobj

        def save(obj, f, *args, **kwargs):
            if isinstance(f, io.BytesIO):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with (open(f, "wb") if isinstance(f, (str, os.PathLike)) else f) as out:
                out.write(data[: len(data) // 2])
                out.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def sendfile(out_fd, in_fd, offset, count):
            real_sendfile(out_fd, in_fd, offset, max(1, count // 2))
            raise OSError(errno.ENOSPC, "No space left on device")

        def copyfileobj(src, dst, length=0):
            dst.write(src.read()[: 1 << 19])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(os, "sendfile", sendfile)
        monkeypatch.setattr(shutil, "copyfileobj", copyfileobj)


def test_disk_full_mid_save_keeps_last_ckpt_and_leaves_no_temp_file(cli_checkpoint_io, other_fs_tmpdir, tmp_path,
                                                                     monkeypatch):
    last = tmp_path / "checkpoints" / "last.ckpt"
    cli_checkpoint_io.save_checkpoint(checkpoint(1.0), last)
    before = last.read_bytes()
    with monkeypatch.context() as m:
        DiskFull(m)
        with pytest.raises(Exception):
            cli_checkpoint_io.save_checkpoint(checkpoint(2.0), last)
    assert last.read_bytes() == before  # the previous checkpoint, whole
    assert torch.load(last, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temp file next to it
    assert list(other_fs_tmpdir.iterdir()) == []  # and none in TMPDIR


def test_non_finite_weights_are_never_written(cli_checkpoint_io, tmp_path):
    from lightning_modules.checkpoint_io import NonFiniteCheckpointError

    last = tmp_path / "last.ckpt"
    cli_checkpoint_io.save_checkpoint(checkpoint(1.0), last)
    bad = checkpoint(1.0)
    bad["state_dict"]["w"][7] = float("nan")
    with pytest.raises(NonFiniteCheckpointError, match=r"last\.ckpt.*NaN/inf \(w\)"):
        cli_checkpoint_io.save_checkpoint(bad, last)
    assert torch.load(last, weights_only=True)["state_dict"]["w"].isfinite().all()


SAVE_LOOP = """
import os, sys, torch
from experiments.cli import build_cli
cli = build_cli(["--config", sys.argv[1], "--runs_dir", sys.argv[2], "--wandb", "false"], run=False)
io, last = cli.trainer.strategy.checkpoint_io, sys.argv[3]
io.save_checkpoint({"state_dict": {"w": torch.zeros(1 << 20)}, "global_step": 1}, last)
print("ready", flush=True)
big = {"state_dict": {"w": torch.ones(40 << 20)}, "global_step": 2}  # 160 MB: a copy takes a while
while True:
    io.save_checkpoint(big, last)
"""


@pytest.mark.slow
def test_kill_9_mid_save_leaves_a_loadable_last_ckpt(other_fs_tmpdir, tmp_path):
    """A real SIGKILL while the CLI's CheckpointIO writes a 160 MB checkpoint across file systems."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    env = cli_env(TMPDIR=str(other_fs_tmpdir))
    proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(EXPERIMENTS / "quickstart.yaml"),
                             str(tmp_path / "runs"), str(last)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        first = os.stat(last)

        def writing() -> bool:  # a temp file appeared, or last.ckpt itself changed
            temps = [p for p in last.parent.iterdir() if p.name != "last.ckpt"] + list(other_fs_tmpdir.iterdir())
            now = os.stat(last)
            return bool(temps) or (now.st_size, now.st_mtime_ns) != (first.st_size, first.st_mtime_ns)

        while not writing():
            assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = torch.load(last, weights_only=True)  # loads: old or new, never half
    assert state["global_step"] in (1, 2)
    assert list(other_fs_tmpdir.iterdir()) == []  # nothing leaked into TMPDIR
    from datamodules.atomic import remove_stale_temps

    remove_stale_temps(last.parent)  # what the CLI does when a run starts in that folder
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


# ---------------------------------------------------------------- weights-only loading (item 19)
@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory) -> Path:
    return shared_quickstart_run(tmp_path_factory) / "checkpoints" / "last.ckpt"


@pytest.fixture
def evil_ckpt(real_ckpt, tmp_path) -> tuple[Path, Path]:
    """A real speechxfer checkpoint plus one pickled object whose unpickling creates ``marker``."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    state = torch.load(real_ckpt, weights_only=True)
    state["callbacks"]["Shared"] = {"note": Payload()}
    path = tmp_path / "shared" / "model.ckpt"
    path.parent.mkdir()
    torch.save(state, path)
    return path, marker


def test_saved_checkpoints_hold_only_tensors_and_plain_values(real_ckpt):
    state = torch.load(real_ckpt, weights_only=True)  # raises on anything else
    assert {"state_dict", "speechxfer", "optimizer_states", "loops", "callbacks"} <= set(state)


@pytest.mark.parametrize("loader", ["load_model", "CheckpointBackbone", "transcribe"])
def test_a_pickled_object_is_refused_and_nothing_executes(evil_ckpt, loader, capsys, tmp_path):
    path, marker = evil_ckpt
    if loader == "transcribe":
        from experiments.cli import main

        audio = tmp_path / "a.flac"
        import soundfile as sf

        from tests.corpus_factory import tone_speech
        sf.write(audio, tone_speech("cat"), 16000)
        assert main(["transcribe", "--ckpt", str(path), str(audio)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 5 and str(path) in err[0] and "refused" in err[1]
    else:
        with pytest.raises(ValueError) as info:
            load_model(path) if loader == "load_model" else CheckpointBackbone(str(path))
        assert type(info.value).__name__ == "CheckpointLoadError"
        assert str(path) in str(info.value) and "refused" in str(info.value)
        assert "pickled object (getattr)" in str(info.value) and "SPEECHXFER_TRUST_CHECKPOINTS" in str(info.value)
    assert not marker.exists()


def test_resume_from_a_checkpoint_with_a_pickled_object_is_refused(evil_ckpt, tmp_path, capsys):
    from experiments.cli import main

    path, marker = evil_ckpt
    with in_process_cli():
        code = main(["fit", "--config", str(EXPERIMENTS / "quickstart.yaml"), "--runs_dir", str(tmp_path / "runs"),
                     "--wandb", "false", "--trainer.max_steps", "1", "--ckpt_path", str(path)])
    assert code == 2 and not marker.exists()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("speechxfer:", "  "))]
    assert err[0] == f"speechxfer: cannot load checkpoint {path}" and "refused" in err[1]


def test_full_unpickling_is_an_opt_in_naming_the_file(evil_ckpt, monkeypatch):
    path, marker = evil_ckpt
    monkeypatch.setenv("SPEECHXFER_TRUST_CHECKPOINTS", str(path.parent / "other.ckpt"))
    with pytest.raises(ValueError, match="refused"):
        load_model(path)
    assert not marker.exists()
    monkeypatch.setenv("SPEECHXFER_TRUST_CHECKPOINTS", f"/nowhere.ckpt{os.pathsep}{path}")
    load_model(path)
    assert marker.exists()  # the user trusted it by name: full unpickling


def test_corrupt_checkpoint_names_the_file_and_the_reason(real_ckpt, tmp_path, capsys):
    from experiments.cli import main

    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(real_ckpt.read_bytes()[:100_000])
    with pytest.raises(ValueError) as info:
        load_model(broken)
    assert str(broken) in str(info.value) and "truncated or corrupt" in str(info.value)
    assert "weights_only" not in str(info.value)  # no misleading advice
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"")
    assert main(["transcribe", "--ckpt", str(broken), str(audio)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 5 and err[0] == f"speechxfer: cannot load checkpoint {broken}"
