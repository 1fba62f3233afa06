"""Helpers for the end-to-end CLI tests: tiny stand-ins for real experiment configs, CLI runners, probes.

    tiny_config(config, work, ckpt)    experiment YAML -> self-contained temp YAML that runs on CPU in seconds
    callbacks_yaml(path, callbacks)     a later ``--config`` setting the top-level ``callbacks:`` list
    run_cli(args) / cli_command(args)   ``python -m experiments ARGS`` (env: ``cli_env()``, W&B offline)
    in_process_cli(cwd)                 context for ``build_cli``/``main`` in the test process (env restored)
    wait_for(predicate, proc)           poll until truthy (or the process died)
    read_metrics(run_dir)               last logged value of every column of the run's ``metrics.csv``
    shared_workdir / shared_quickstart_run   per-session artefacts shared by the CLI test modules

Callbacks the tests inject through configs (subprocesses import them via ``PYTHONPATH``):
``DumpTrainState`` (per-step batch ids / epoch / trainable set, per-rank final parameters),
``Throttle`` (sleeps before each step from a given step on: a window for SIGKILL) and
``TranscriptRecorder`` (the transcripts of a ``speechxfer test`` run).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import soundfile as sf
import torch
import yaml

from tests.corpus_factory import WORDS, make_commonvoice, make_librispeech, tone_speech

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
EXPERIMENT_CONFIGS = sorted(EXPERIMENTS.glob("*.yaml"))
COMPONENT_CONFIGS = sorted((EXPERIMENTS / "data").glob("*.yaml")) + sorted((EXPERIMENTS / "trainer").glob("*.yaml"))

SMALL_CNN = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]  # 320x, 50 fps
TINY_TORCHAUDIO = {
    "encoder_num_layers": 2, "encoder_embed_dim": 32, "encoder_num_heads": 2, "encoder_ff_interm_features": 64,
    "extractor_conv_layer_config": SMALL_CNN, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4,
}
CPU_TRAINER = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true"}
LS_COUNTS = {"train": 12, "dev": 4, "test": 4}  # utterances per generated LibriSpeech subset, by prefix
CV_COUNTS = {"train": 12, "dev": 4, "test": 4}  # clips per generated Common Voice split (others: 4)
CV_ACCENTS = ("United States English", "England English", "Scottish English")  # one per generated client
TINY_EPISODES = {"shots": 1, "queries": 1, "eval_shots": 1, "eval_queries": 1, "test_shots": [0, 1], "meta_val": 1,
                 "meta_test": 1, "tasks_per_step": 1}  # EpisodicDataModule sizes that fit the generated corpora


# ---------------------------------------------------------------- configs
def load_experiment(config: Path) -> dict[str, Any]:
    """An experiment YAML with its component includes (``trainer: trainer/cpu.yaml``) inlined."""
    config = Path(config)
    cfg = yaml.safe_load(config.read_text())
    for key, value in list(cfg.items()):
        if isinstance(value, str) and value.endswith((".yaml", ".yml")) and (config.parent / value).is_file():
            cfg[key] = yaml.safe_load((config.parent / value).read_text())
    return cfg


class TinySubstitutions:
    """Rewrites a loaded config so it runs offline on CPU in seconds (see :func:`tiny_config`).

    Corpora whose root is not shipped under ``experiments/`` (real data roots such as ``data``, present or
    not), or every corpus with ``all_data=True``, move to tiny generated corpora under ``work``; shipped
    roots (the demo corpus) become absolute.
    """

    def __init__(self, work: Path, ckpt: Path | None = None, all_data: bool = False) -> None:
        self.work, self.ckpt, self.all_data = Path(work), ckpt, all_data
        self.librispeech: set[str] = set()
        self.commonvoice: set[tuple[str, str]] = set()

    def apply(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.apply(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: self.apply(v) for k, v in node.items()}
        kind = str(node.get("class_path", "")).rsplit(".", 1)[-1]
        args = node.get("init_args")
        if isinstance(args, dict):
            handler = getattr(self, f"_{kind}", None)
            if handler is not None:
                node["init_args"] = handler(dict(args))
        for decoder in (node.get("eval_decoders") or {}).values():  # shipped LM / lexicon: repo-relative paths
            decoder.update({k: str(REPO / v) for k, v in decoder.items() if k in ("lexicon", "lm") and v})
        if "feature_cache_dir" in node:
            node["feature_cache_dir"] = str(self.work / "feature_cache")
        if isinstance(node.get("noise"), str) and self._root(node["noise"]) is None:  # augment noise under data/
            node["noise"] = None
        return node

    def _root(self, root: str) -> str | None:
        """The absolute root of a corpus shipped in ``experiments/`` (the demo corpus), else None (move it).

        Only shipped roots are kept: a user's ``data/`` (ignored by git) may exist in the checkout, and a
        test must never read it (nor any other root outside the repo's shipped files)."""
        path = (Path(root) if Path(root).is_absolute() else REPO / root).resolve()
        shipped = path.is_relative_to(EXPERIMENTS.resolve()) and path.exists()
        return str(path) if shipped and not self.all_data else None

    def _LibriSpeechCorpus(self, args: dict) -> dict:  # noqa: N802 (named after the class)
        root = self._root(args["root"])
        if root is None:
            self.librispeech.update(args["subsets"])
            root = str(self.work / "tiny_corpus")
        return {**args, "root": root}

    def _CommonVoiceCorpus(self, args: dict) -> dict:  # noqa: N802
        root = self._root(args["root"])
        if root is None:
            self.commonvoice.add((args.get("locale", "en"), args["split"]))
            root = str(self.work / "tiny_corpus" / "commonvoice")
        return {**args, "root": root}

    def _ASRDataModule(self, args: dict) -> dict:  # noqa: N802
        if args.get("tokenizer_path") and not Path(args["tokenizer_path"]).is_absolute():  # repo-relative
            args = {**args, "tokenizer_path": str(REPO / args["tokenizer_path"])}
        return {**args, "num_workers": 0}

    _DomainAdaptationDataModule = _ASRDataModule  # noqa: N815

    def _EpisodicDataModule(self, args: dict) -> dict:  # noqa: N802
        tiny = str(self.work / "tiny_corpus") in json.dumps(args.get("corpora"))
        return {**args, "num_workers": 0, **(TINY_EPISODES if tiny else {})}

    def _TorchaudioBackbone(self, args: dict) -> dict:  # noqa: N802
        bundle = args.get("bundle", "WAV2VEC2_BASE")
        overrides = {**(args.get("config_overrides") or {}), **TINY_TORCHAUDIO}
        return {**args, "config_overrides": overrides, "weights_path": str(tiny_weights(bundle, overrides, self.work))}

    def _CheckpointBackbone(self, args: dict) -> dict:  # noqa: N802
        if self.ckpt is None:
            raise ValueError("this config needs a checkpoint for its CheckpointBackbone: pass ckpt=")
        return {**args, "path": str(self.ckpt)}

    def _PseudoLabelCTC(self, args: dict) -> dict:  # noqa: N802
        return {**args, "init_from": str(self.ckpt)} if args.get("init_from") else args

    def _FineTuneCTC(self, args: dict) -> dict:  # noqa: N802
        """``init_head_from`` (the source model's head) follows the CheckpointBackbone to the tiny checkpoint."""
        return {**args, "init_head_from": str(self.ckpt)} if args.get("init_head_from") else args

    def make_corpora(self) -> None:
        """Generate (once) every LibriSpeech subset and Common Voice split the rewritten configs named."""
        root = self.work / "tiny_corpus"
        missing = [s for s in sorted(self.librispeech) if not (root / "LibriSpeech" / s).is_dir()]
        if missing:
            make_librispeech(root, {s: LS_COUNTS.get(s.split("-")[0], 4) for s in missing})
            for chapter, subset in enumerate(missing, start=1):  # text covering every character; ids unique
                add_librispeech_utterance(root, subset, " ".join(WORDS), chapter=chapter)
        for locale in sorted({loc for loc, _ in self.commonvoice}):
            if not (root / "commonvoice" / locale / "train.tsv").is_file():
                splits = (set(CV_COUNTS) | {s for loc, s in self.commonvoice if loc == locale}) - {"validated"}
                make_commonvoice(root / "commonvoice", locale, {s: CV_COUNTS.get(s, 4) for s in sorted(splits)},
                                 accents=CV_ACCENTS)
                add_commonvoice_clip(root / "commonvoice", locale, "train", " ".join(WORDS))


def add_librispeech_utterance(root: Path, subset: str, text: str, speaker: int = 999, chapter: int = 1) -> Path:
    """Append one tone-speech utterance (``<speaker>-<chapter>-0000``) to a LibriSpeech-layout subset."""
    folder = Path(root) / "LibriSpeech" / subset / str(speaker) / str(chapter)
    folder.mkdir(parents=True, exist_ok=True)
    uid = f"{speaker}-{chapter}-0000"
    sf.write(folder / f"{uid}.flac", tone_speech(text), 16000)
    (folder / f"{speaker}-{chapter}.trans.txt").write_text(f"{uid} {text.upper()}\n", encoding="utf-8")
    return folder / f"{uid}.flac"


def add_commonvoice_clip(root: Path, locale: str, split: str, text: str, sample_rate: int = 48000) -> Path:
    """Append one tone-speech MP3 clip (``pangram_<split>.mp3``) to a Common Voice split TSV."""
    clip = Path(root) / locale / "clips" / f"pangram_{split}.mp3"
    sf.write(clip, tone_speech(text, sample_rate, shift=0.5), sample_rate)
    row = ["client9", clip.name, text.capitalize() + ".", "2", "0", "", "", "", "", locale, ""]
    with open(Path(root) / locale / f"{split}.tsv", "a", encoding="utf-8") as f:
        f.write("\t".join(row) + "\n")
    return clip


def tiny_weights(bundle: str, overrides: dict, work: Path) -> Path:
    """A local weights file for a tiny ``TorchaudioBackbone`` so ``load_pretrained()`` never downloads."""
    from lightning_modules.backbones import TorchaudioBackbone, save_backbone_weights

    path = Path(work) / f"tiny_{bundle}.pt"
    if not path.is_file():
        torch.manual_seed(0)
        save_backbone_weights(TorchaudioBackbone(bundle, config_overrides=overrides), path)
    return path


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in recursively (dicts merge, everything else replaces)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_config(config: Path, work: Path, ckpt: Path | None = None, all_data: bool = False,
                overrides: dict | None = None) -> Path:
    """Write ``work/<name>.yaml``: ``config`` with tiny data/backbones, CPU fp32 trainer, 0 workers.

    ``ckpt`` replaces every ``CheckpointBackbone`` path; ``all_data`` moves every corpus (not only
    missing roots) to the generated tone-speech corpora; ``overrides`` is deep-merged last.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    subs = TinySubstitutions(work, ckpt, all_data)
    cfg = subs.apply(copy.deepcopy(load_experiment(config)))
    cfg["trainer"] = {**(cfg.get("trainer") or {}), **CPU_TRAINER}
    cfg = deep_merge(cfg, overrides or {})
    subs.make_corpora()
    out = work / Path(config).name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def callbacks_yaml(path: Path, callbacks: list[dict]) -> Path:
    """A config fragment setting the top-level ``callbacks:`` list (pass it as a later ``--config``)."""
    Path(path).write_text(yaml.safe_dump({"callbacks": callbacks}, sort_keys=False))
    return Path(path)


# ---------------------------------------------------------------- running the CLI
def cli_env(**extra: str) -> dict[str, str]:
    """Subprocess environment: repo importable, W&B offline, one thread, no inherited run dir."""
    drop = ("SPEECHXFER_RUN_DIR", "SLURM_JOB_ID", "SLURM_PROCID", "WANDB_SERVICE")  # (W&B: this process's service)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


@contextmanager
def in_process_cli(cwd: Path | None = None) -> Iterator[None]:
    """Run the CLI inside the test process: one thread, W&B offline, and afterwards the environment
    (the CLI exports ``SPEECHXFER_RUN_DIR``, ``PL_GLOBAL_SEED``, ...), cwd and thread count restored."""
    saved_env, saved_cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    os.environ.pop("SPEECHXFER_RUN_DIR", None)
    os.environ["WANDB_MODE"] = "offline"
    torch.set_num_threads(1)
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(saved_env)


def cli_command(args: list) -> list[str]:
    return [sys.executable, "-m", "experiments", *map(str, args)]


def run_cli(args: list, cwd: Path = REPO, timeout: float = 500, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m experiments ARGS``; with ``check`` a non-zero exit fails showing the output tail."""
    proc = subprocess.run(cli_command(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`speechxfer {' '.join(map(str, args))}` exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def wait_for(predicate: Callable[[], Any], proc: subprocess.Popen | None = None, timeout: float = 400,
             poll: float = 0.2) -> Any:
    """Poll ``predicate`` until truthy; raise if ``proc`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited ({proc.returncode}) before the condition held:\n{out[-6000:]}")
        time.sleep(poll)
    raise AssertionError(f"condition not reached within {timeout}s")


def read_metrics(run_dir: Path) -> dict[str, float]:
    """Last non-empty value of every column of the CSVLogger ``metrics.csv`` under ``run_dir``."""
    files = list(Path(run_dir).rglob("metrics.csv"))
    if not files:
        raise AssertionError(f"no metrics.csv under {run_dir}")
    values: dict[str, float] = {}
    with open(files[0], newline="") as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return values


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- callbacks injected through configs
class DumpTrainState(pl.Callback):
    """Records what each training step saw, for comparing runs (list it after ``GradualUnfreezing``).

    Every batch start appends a JSON line to ``<dirpath>/steps_rank<r>.jsonl``:
    ``{"step", "epoch", "batch_idx", "ids", "trainable"}`` (utterance ids of the batch; names of the
    parameters that require grad). At fit end each rank writes ``train_state_rank<r>.pt``:
    ``{"params": {name: tensor}, "requires_grad": {name: bool}, "global_step": int}``.
    ``dirpath`` defaults to the trainer's ``default_root_dir`` (the run directory).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def _out(self, trainer: pl.Trainer) -> Path:
        out = Path(self.dirpath or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
                  "ids": batch_ids(batch), "trainable": [n for n, p in pl_module.named_parameters() if p.requires_grad]}
        with open(self._out(trainer) / f"steps_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            "params": {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()},
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "global_step": trainer.global_step,
        }
        torch.save(state, self._out(trainer) / f"train_state_rank{trainer.global_rank}.pt")


class TranscriptRecorder(pl.Callback):
    """Writes ``{utterance id: transcript}`` of a ``speechxfer test`` run to ``path`` (JSON) at test end.

    Reads the ``{"ids", "transcripts"}`` that ``CTCModule.test_step`` returns.
    """

    def __init__(self, path: str) -> None:
        self.path, self.transcripts = path, {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.transcripts.update(zip(outputs["ids"], outputs["transcripts"]))

    def on_test_end(self, trainer, pl_module) -> None:
        Path(self.path).write_text(json.dumps(self.transcripts))


def batch_ids(batch: Any) -> list[str]:
    """Utterance ids of a batch dict, or of both halves of a DANN ``{"source", "target"}`` batch."""
    if "ids" in batch:
        return list(batch["ids"])
    return [i for key in sorted(batch) for i in batch_ids(batch[key])]


def read_steps(run_dir: Path, rank: int = 0) -> dict[int, dict]:
    """``{step: record}`` from ``steps_rank<r>.jsonl``; a later record of a step (after a resume) wins."""
    lines = (Path(run_dir) / f"steps_rank{rank}.jsonl").read_text().splitlines()
    return {rec["step"]: rec for rec in map(json.loads, lines)}


class Throttle(pl.Callback):
    """Sleep ``seconds`` before every training batch from global step ``after_step`` on (kill window)."""

    def __init__(self, after_step: int, seconds: float = 1.0) -> None:
        self.after_step, self.seconds = after_step, seconds

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.after_step:
            time.sleep(self.seconds)


# ---------------------------------------------------------------- session-wide artefacts
_SHARED: dict[str, Path] = {}  # one per pytest process, whichever test module asks first


def shared_workdir(tmp_path_factory) -> Path:
    """One temp folder for the tiny corpora / weights every CLI test module reuses."""
    if "work" not in _SHARED:
        _SHARED["work"] = tmp_path_factory.mktemp("cli_work")
    return _SHARED["work"]


QUICKSTART_ARGS = [
    "--trainer.max_steps", "2", "--trainer.log_every_n_steps", "1", "--checkpoint_every_n_steps", "1",
    "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "2",
]


def shared_quickstart_run(tmp_path_factory) -> Path:
    """Run dir of ``speechxfer fit --config experiments/quickstart.yaml`` for 2 steps (demo corpus, W&B offline).

    Its ``checkpoints/last.ckpt`` feeds the CheckpointBackbone configs, transcribe and validate tests.
    """
    if "quickstart" not in _SHARED:
        runs = tmp_path_factory.mktemp("quickstart_runs")
        run_cli(["fit", "--config", EXPERIMENTS / "quickstart.yaml", "--runs_dir", runs, "--run_name", "qs",
                 *QUICKSTART_ARGS])
        _SHARED["quickstart"] = runs / "quickstart" / "qs"
    return _SHARED["quickstart"]


# ---------------------------------------------------------------- fault tests (issue 11)
TINY_QUICKSTART = {
    "model": {"init_args": {
        "backbone": {"init_args": {"n_mels": 40, "conv_channels": 8, "hidden": 32, "num_layers": 1,
                                   "kind": "bilstm", "subsampling": 4, "dropout": 0.0}},
        "dropout": 0.0, "warmup_steps": 0,
    }},
    "data": {"init_args": {"max_duration": 4.0, "num_buckets": 2}},
    "trainer": {"max_epochs": -1, "check_val_every_n_epoch": None, "val_check_interval": 2, "log_every_n_steps": 1},
}


def tiny_quickstart(work: Path, overrides: dict | None = None) -> Path:
    """The from-scratch experiment (scratch_demo.yaml; runs under ``runs/quickstart``) on generated
    tone-speech corpora under ``work``, a 1-layer model: seconds per run.

    The training corpus is ``work/tiny_corpus/LibriSpeech/train-clean-100`` (damage it before running).
    """
    return tiny_config(EXPERIMENTS / "scratch_demo.yaml", work, all_data=True,
                       overrides=deep_merge({**TINY_QUICKSTART, "experiment": "quickstart"}, overrides or {}))


def fit_in_process(args: list, cwd: Path) -> int:
    """``speechxfer fit ARGS`` in this process (``experiments.cli.main``); its exit status."""
    from experiments.cli import main

    with in_process_cli(cwd):
        return main(["fit", *map(str, args)])


class PoisonBatch(pl.Callback):
    """Writes NaN into the audio of the training batch at global step ``step`` (a non-finite loss there)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch["audio"][0, :100] = float("nan")


class RaiseAtStep(pl.Callback):
    """Raises ``RuntimeError`` at the start of global step ``step`` (a run that fails mid-way)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"RaiseAtStep: failing at step {self.step} on purpose")


# Command-line overrides for a 2-process CPU DDP run (gloo).
CPU_DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
