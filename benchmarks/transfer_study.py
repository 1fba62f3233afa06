"""A reproducible transfer-learning study on CPU: nine methods, one command, one report.

    python benchmarks/transfer_study.py --out runs/study                 # speech: the demo corpus (default)
    python benchmarks/transfer_study.py --out runs/study_tone --corpus tone   # the generated tone pair
    python benchmarks/transfer_study.py --quick --out /tmp/study         # smoke run (a few steps, tiny splits)

Data (``--corpus``): ``demo`` (default) is SPEECH, ``experiments/demo_corpus``: source domain = espeak-ng
voices (LibriSpeech layout), target domain = flite voices + noise + telephone band + MP3 (Common Voice
layout); the source model (b) is the SHIPPED model ``experiments/models/synth_en_bigru.ckpt`` (trained on
3.1 h of espeak-ng English, see ``experiments/models/README.md``), tested as is -- nothing trains it here --
and every data config takes its vocabulary from that checkpoint (``tokenizer_path``), so its CTC head is
reused. ``tone`` generates a source/target pair of "tone speech" (``benchmarks/tone_pair.py``) that tiny CPU
models learn from scratch in minutes; there (b) trains ``scratch_demo.yaml`` on the source and the
vocabulary is built from the source training text. Seeds are fixed.

Methods, each trained by the real CLI (``python -m experiments fit``) from the demo experiment configs
plus command-line overrides, then evaluated on the source and target TEST sets with
``python -m experiments test`` on its last checkpoint (a fixed budget: no model selection):

    (a) scratch      scratch_demo.yaml   on the small labelled target subset (budget of (c))
    (b) source_only  demo: the shipped model, test only (source_model.yaml builds its architecture);
                     tone: scratch_demo.yaml on the labelled source
    (c) finetune     demo_finetune.yaml  source model -> target subset, staged unfreezing (GradualUnfreezing);
                                         demo: its CTC head too (``init_head_from``)
    (d) frozen       demo_frozen.yaml    frozen source encoder + weighted layer sum + BiLSTM head, target subset
    (e) dann         demo_dann.yaml      labelled source + UNLABELLED target, gradient reversal; starts from the
                                         source model (b) (demo: encoder + head; ``--set dann_init=scratch``: random init)
    (f) replay       demo_finetune.yaml  as (c), with source replay: each epoch muxes the target subset with a
                                         slice of the source training set (``replay_ratio`` of the audio)
    (g) self_train   demo_pseudo_label.yaml  labelled source + UNLABELLED target, EMA-teacher pseudo-labels, noisy
                                         student; student and teacher start as the source model (b); budget of (e)
    (h) dann_self_train  demo_pseudo_label.yaml  as (g), starting from the DANN model (e)
    (i) source_tta   no training: (b) tested with SUTA test-time adaptation per utterance
                                         (``experiments/tta/suta_demo.yaml``; ``--set tta_steps=... tta_lr=...``);
                                         its cost (adaptation s per audio s) is a column of the report

(g) and (h) log the pseudo-labels' CER (``train/pl_cer``): their data config sets ``target_labels: monitor``
(target transcripts travel for that metric only, never as labels).

``speechxfer compare`` then tabulates the runs (best validation values, curves) in
``OUT/compare/``, and ``OUT/report.md`` gives the test table, the expected orderings from the
literature ((c) < (a), (e) < (b), (g) < (b), (i) < (b) on target WER) with whether this run shows them,
the settings and the exact commands.

Decoding: every test run logs greedy metrics (``test/<domain>/*``) and, unless ``--set beam_size=0``,
beam search + LM metrics of the same checkpoint and forward pass (``test_beam/<domain>/*``, the
``eval_decoders`` of ``CTCModule``): a lexicon and a ``lm_order``-gram LM built from the SOURCE training
transcripts (``speechxfer lm``, ``OUT/lm/``; no target text), weights ``lm_weight`` / ``word_score``.
``OUT/compare_test/`` compares the test runs (greedy and beam columns side by side).

Overrides the study adds to the demo configs (see ``method_args``): data configs for the chosen corpus;
whole epochs with ``trainer.max_steps`` set to their exact number of batches (the step counts in the
report); ``decay`` (``Settings.for_corpus``: cosine on the demo corpus; constant on the tone pair, where cosine
decay over these short budgets stops the from-scratch BiLSTM before it leaves the CTC blank plateau); (c) and
(f) get the demo unfreezing schedule stretched to their epochs. ``--set KEY=VALUE`` changes any ``Settings``
field, e.g. ``--set target_steps=300 dann_lambda=0.5``. See ``benchmarks/study_notes.md`` for why the tone
defaults are what they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, commonvoice, librispeech, make_tone_corpus, run_cli, write_yaml  # noqa: E402
from benchmarks.study_report import write_study_report  # noqa: E402

DEMO_ROOT = REPO / "experiments" / "demo_corpus"
SHIPPED = REPO / "experiments" / "models" / "synth_en_bigru.ckpt"  # the demo study's source model (b)


@dataclass
class Settings:
    """Budgets of one study (``--quick`` shrinks everything)."""

    train: int = 400             # tone corpus: utterances per domain in train (dev/test below)
    dev: int = 40
    test: int = 40
    shift: float = 0.2           # tone corpus target voice shift (pitch x (1 + 0.25 shift) + noise)
    target_minutes: float = 1.0  # labelled target subset for (a), (c), (d)
    max_duration: float = 20.0   # seconds of audio per batch
    source_steps: int = 900      # (b) and (e)
    target_steps: int = 300      # (a), (c), (d)
    val_every: int = 5           # validations per run (approximately)
    subsampling: int = 4         # ScratchEncoder frame rate 100 / subsampling per second
    decay: str = "constant"      # lr decay of every method (the demo configs: cosine)
    dann_init: str = "source"    # (e) starts from the source model (b) ("source") or from random init ("scratch")
    dann_lambda: float = 0.1     # (e) lambda_max of the ganin schedule (as demo_dann.yaml)
    dann_level: str = "utterance"  # (e) domain classifier on mean-pooled utterances or on every frame
    replay_ratio: float = 0.3    # (f) share of each epoch's audio replayed from the source training set
    tta_steps: int = 10          # (i) SUTA steps per utterance (experiments/tta/suta_demo.yaml: 10)
    tta_lr: float = 1e-3         # (i) SUTA learning rate (suta_demo.yaml: 1e-3 for the small demo models)
    beam_size: int = 50          # test also with beam search + lexicon + LM (0: greedy only)
    lm_order: int = 3            # n-gram order of the LM from the source training transcripts
    lm_weight: float = 1.0
    word_score: float = 0.0

    demo_minutes: float = 0.0    # demo corpus: > 0 keeps only this many minutes of every split (--quick)

    @classmethod
    def quick(cls) -> Settings:
        return cls(train=24, dev=4, test=4, target_minutes=0.2, max_duration=8.0, source_steps=4, target_steps=4,
                   val_every=1)

    @classmethod
    def for_corpus(cls, corpus: str, quick: bool = False) -> Settings:
        """The tone defaults above, or the demo study's: the shipped model fine-tuned on 2 labelled target
        minutes for ~150 steps; DANN / self-training ~150 steps over the source; cosine decay (the demo configs')."""
        s = cls.quick() if quick else cls()
        if corpus == "demo":
            s.decay = "cosine"
            s.target_minutes, s.target_steps, s.source_steps = (0.2, 2, 2) if quick else (2.0, 150, 150)
            s.demo_minutes = 0.25 if quick else 0.0
        return s


@dataclass
class Method:
    key: str
    config: str
    data: str                 # "source" | "target_subset" | "dann"
    needs_source: bool = False
    steps_of: str = "target"  # which budget: "source" | "target"
    label: str = ""
    start_from: str = ""      # key of the method whose last checkpoint starts backbone + featurizer + head
    test_only: str = ""       # no fit: test this method's last checkpoint (with test-time adaptation)


DEMO_METHODS = {  # the shipped model is (b): tested as is, never trained here; (i) tests it with TTA
    "b_source_only": Method("b_source_only", "source_model.yaml", "source", test_only="shipped",
                            label="(b) source only (shipped model)"),
    "i_source_tta": Method("i_source_tta", "source_model.yaml", "source", test_only="shipped",
                           label="(i) source only + TTA (SUTA)"),
}

METHODS = [
    Method("b_source_only", "scratch_demo.yaml", "source", steps_of="source", label="(b) source only"),
    Method("a_scratch", "scratch_demo.yaml", "target_subset", label="(a) scratch on target subset"),
    Method("c_finetune", "demo_finetune.yaml", "target_subset", needs_source=True, label="(c) fine-tune, staged"),
    Method("d_frozen", "demo_frozen.yaml", "target_subset", needs_source=True, label="(d) frozen + head"),
    Method("e_dann", "demo_dann.yaml", "dann", steps_of="source", label="(e) DANN, unlabelled target"),  # after (b)
    Method("f_replay", "demo_finetune.yaml", "target_replay", needs_source=True, label="(f) fine-tune + source replay"),
    Method("g_self_train", "demo_pseudo_label.yaml", "self_training", steps_of="source", start_from="b_source_only",
           label="(g) self-training, unlabelled target"),
    Method("h_dann_self_train", "demo_pseudo_label.yaml", "self_training", steps_of="source", start_from="e_dann",
           label="(h) self-training after DANN"),
    Method("i_source_tta", "scratch_demo.yaml", "source", steps_of="source", test_only="b_source_only",
           label="(i) source only + TTA (SUTA)"),
]


def methods(corpus: str) -> list[Method]:
    """The study's methods in run order; on the demo corpus (b) and (i) are the shipped model."""
    return [DEMO_METHODS.get(m.key, m) if corpus == "demo" else m for m in METHODS]


def source_checkpoint(out: Path, corpus: str) -> Path:
    """The source model (b) that (c)-(g) start from: the shipped model (demo) or (b)'s run (tone)."""
    return SHIPPED if corpus == "demo" else out / "runs" / "study" / "b_source_only" / "checkpoints" / "last.ckpt"


# ---------------------------------------------------------------- data configs
def corpora(kind: str, root: Path, minutes: float = 0.0) -> dict[str, dict]:
    """Corpus configs of the study's splits (both corpora share the layout ``root/{LibriSpeech,commonvoice}``);
    ``minutes`` > 0 keeps that many minutes of each split (seeded subsets: the demo corpus in ``--quick``)."""
    root = DEMO_ROOT if kind == "demo" else root

    def cut(corpus: dict) -> dict:
        if minutes > 0:
            corpus["init_args"].update(max_minutes=minutes, seed=0)
        return corpus

    return {"source_train": cut(librispeech(root, "train-clean-100")), "source_dev": cut(librispeech(root, "dev-clean")),
            "source_test": cut(librispeech(root, "test-clean")), "target_train": cut(commonvoice(root, "train")),
            "target_dev": cut(commonvoice(root, "dev")), "target_test": cut(commonvoice(root, "test")),
            "target_subset": lambda m: commonvoice(root, "train", max_minutes=m, seed=0)}


def build_tokenizer(c: dict, cache: Path, path: Path) -> Path:
    """One character vocabulary for every method: built from the source training text."""
    from jsonargparse import ArgumentParser

    from datamodules import ASRDataModule, Corpus

    parser = ArgumentParser()
    parser.add_subclass_arguments(Corpus, "corpus")
    corpus = parser.instantiate(parser.parse_object({"corpus": c["source_train"]})).corpus
    ASRDataModule(train=corpus, cache_dir=str(cache)).tokenizer.save(path)
    return path


def asr_data(domain: str, train: dict, c: dict, s: Settings, cache: Path, tokenizer: Path) -> dict:
    first, second = ("source", "target") if domain == "source" else ("target", "source")
    return {"class_path": "datamodules.ASRDataModule", "init_args": {
        "domain": domain, "train": train,
        "val": {first: c[f"{first}_dev"], second: c[f"{second}_dev"]},
        "test": {first: c[f"{first}_test"], second: c[f"{second}_test"]},
        "max_duration": s.max_duration, "num_buckets": 4, "num_workers": 1, "seed": 0, "cache_dir": str(cache),
        "tokenizer_path": str(tokenizer)}}


def study_tokenizer(corpus: str, c: dict, cache: Path) -> Path:
    """Where every method's vocabulary comes from: the shipped model's checkpoint (demo: its CTC head is
    reused), or one built from the source training text (tone)."""
    return SHIPPED if corpus == "demo" else build_tokenizer(c, cache, cache / "tokenizer.json")


def write_data_configs(out: Path, c: dict, s: Settings, tokenizer: Path) -> dict[str, Path]:
    """data_source.yaml, data_target_subset.yaml, data_dann.yaml, data_target_replay.yaml, data_self_training.yaml
    under ``out/configs``; all with the vocabulary of ``tokenizer`` (a saved tokenizer or a checkpoint)."""
    cache = out / "cache"
    subset = c["target_subset"](s.target_minutes)
    common = {"max_duration": s.max_duration, "num_buckets": 4, "num_workers": 1, "cache_dir": str(cache),
              "tokenizer_path": str(tokenizer)}
    dann = {"class_path": "datamodules.DomainAdaptationDataModule", "init_args": {
        "source_train": c["source_train"], "target_train": c["target_train"], "target_labels": False,
        "val": {"source": c["source_dev"], "target": c["target_dev"]},
        "test": {"source": c["source_test"], "target": c["target_test"]}, **common}}
    replay = asr_data("target", subset, c, s, cache, tokenizer)
    replay["init_args"].update(replay=c["source_train"], replay_ratio=s.replay_ratio)
    self_training = {**dann, "init_args": {**dann["init_args"], "target_labels": "monitor"}}  # pl_cer only
    configs = {"source": asr_data("source", c["source_train"], c, s, cache, tokenizer),
               "target_subset": asr_data("target", subset, c, s, cache, tokenizer), "dann": dann,
               "target_replay": replay,
               "self_training": self_training}
    return {k: write_yaml(out / "configs" / f"data_{k}.yaml", v) for k, v in configs.items()}


def steps_per_epoch(data_config: Path) -> int:
    """Training batches per epoch of a data config (the samplers are deterministic)."""
    from jsonargparse import ArgumentParser

    from datamodules import SpeechDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(SpeechDataModule, "data")
    dm = parser.instantiate(parser.parse_args(["--data", str(data_config)])).data
    return dm.train_batches_per_epoch(rank=0, world_size=1)  # domain adaptation: one pass over the source


# ---------------------------------------------------------------- runs
def epoch_budget(steps: int, per_epoch: int, validations: int) -> tuple[int, int]:
    """(epochs, validate every n epochs): whole epochs closest to ``steps`` (at most ``steps`` when it is
    at least one epoch), a multiple of the validation interval so the last epoch is validated."""
    epochs = max(1, round(steps / max(1, per_epoch)))
    every = max(1, epochs // max(1, validations))
    return max(every, epochs // every * every), every


def method_args(m: Method, out: Path, data: dict[str, Path], s: Settings, epoch_steps: dict[str, int],
                corpus: str = "tone") -> list[str]:
    """Config + overrides shared by fit and test of method ``m``."""
    epochs, val_every = epoch_budget(s.source_steps if m.steps_of == "source" else s.target_steps,
                                     epoch_steps[m.data], s.val_every)
    steps = epochs * epoch_steps[m.data]  # also what the schedules span (optim.total_optimizer_steps)
    args = ["--config", str(REPO / "experiments" / m.config), "--data", str(data[m.data]),
            "--experiment", "study", "--run_name", m.key, "--wandb", "false",
            "--trainer.max_epochs", str(epochs), "--trainer.max_steps", str(steps),
            "--trainer.check_val_every_n_epoch", str(val_every), "--checkpoint_every_n_steps", str(steps),
            "--model.init_args.decay", s.decay]
    from_source = m.needs_source or (m.key == "e_dann" and s.dann_init == "source")
    if m.key == "e_dann" and not from_source:  # demo_dann.yaml starts from a source model: use scratch_demo's encoder
        scratch_demo = yaml.safe_load((REPO / "experiments" / "scratch_demo.yaml").read_text())
        scratch = {"model": {"init_args": {"backbone": scratch_demo["model"]["init_args"]["backbone"]}}}
        args[2:2] = ["--config", str(write_yaml(out / "configs" / "dann_from_scratch.yaml", scratch))]
    source = str(source_checkpoint(out, corpus))
    if m.start_from:  # self-training: student (+ teacher) = that model's backbone, featurizer and head
        ckpt = source if m.start_from == "b_source_only" else str(
            out / "runs" / "study" / m.start_from / "checkpoints" / "last.ckpt")
        args += ["--model.init_args.backbone.init_args.path", ckpt, "--model.init_args.init_from", ckpt]
    elif from_source:  # the encoder (architecture + weights) is the source model's
        args += ["--model.init_args.backbone.init_args.path", source]
        if corpus == "demo" and m.key in ("c_finetune", "f_replay", "e_dann"):  # and its CTC head: the whole model
            args += ["--model.init_args.init_head_from", source]
    elif m.test_only:  # tested as is: the config builds the shipped model's architecture
        pass
    else:
        args += ["--model.init_args.backbone.init_args.subsampling", str(s.subsampling)]
    if m.key == "e_dann":
        args += ["--model.init_args.lambda_max", str(s.dann_lambda), "--model.init_args.domain_level", s.dann_level]
    if m.key in ("c_finetune", "f_replay"):  # the demo schedule in epochs, stretched to this budget: head, +top, all
        schedule = {0: ["head"], max(1, epochs // 5): ["top:1"], max(2, 2 * epochs // 5): ["all"]}
        override = {"callbacks": [{"class_path": "callbacks.GradualUnfreezing", "init_args": {
            "unit": "epoch", "schedule": schedule, "warmup_steps": 10}}]}
        args += ["--config", str(write_yaml(out / "configs" / f"{m.key}_schedule.yaml", override))]
    if m.key == "d_frozen":
        args += ["--model.init_args.feature_cache_dir", str(out / "feature_cache")]
    if m.key == "i_source_tta":  # the tested model's config and budget, test-time adaptation on top
        args += ["--config", str(REPO / "experiments" / "tta" / "suta_demo.yaml"),
                 "--tta.steps", str(s.tta_steps), "--tta.lr", str(s.tta_lr)]
    return args


def read_test_metrics(run_dir: Path) -> dict[str, float]:
    """``test/*`` (greedy) and ``test_<decoder>/*`` values of a test run."""
    path = next(p for p in (run_dir / "metrics.csv", run_dir / "csv" / "metrics.csv") if p.is_file())
    values = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v and k.split("/")[0].split("_")[0] == "test"})
    return values


def decoding_args(out: Path, data: dict[str, Path], s: Settings, log: Path, tokenizer: Path) -> list[str]:
    """``--model.init_args.eval_decoders`` of the test runs: beam search + lexicon + LM from the source
    training transcripts (built once into ``out/lm``); none when ``s.beam_size`` is 0."""
    if s.beam_size <= 0:
        return []
    lm = out / "lm"
    spelling = ["--ckpt", str(tokenizer)] if tokenizer.suffix == ".ckpt" else ["--tokenizer", str(tokenizer)]
    run_cli(["lm", "--data", str(data["source"]), *spelling,
         "--order", str(s.lm_order), "--out", str(lm)], log)
    beam = {"beam_size": s.beam_size, "lexicon": str(lm / "lexicon.txt"), "lm": str(lm / "lm.arpa"),
            "lm_weight": s.lm_weight, "word_score": s.word_score}
    return ["--model.init_args.eval_decoders", json.dumps({"beam": beam})]


def run_study(out: Path, corpus: str, s: Settings, only: list[str] | None = None, threads: int | None = 1,
              notes: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    root = out / "corpus"
    t0 = time.perf_counter()
    if corpus == "tone":
        make_tone_corpus(root, s.train, s.dev, s.test, target_shift=s.shift)
    c = corpora(corpus, root, s.demo_minutes if corpus == "demo" else 0.0)
    tokenizer = study_tokenizer(corpus, c, out / "cache")
    data = write_data_configs(out, c, s, tokenizer)
    epoch_steps = {k: steps_per_epoch(p) for k, p in data.items()}
    decoding = decoding_args(out, data, s, log, tokenizer)
    results, commands = {}, []
    for m in methods(corpus):
        if only and not {m.key, m.key.split("_")[0]} & set(only):  # "b_source_only" or "b"
            continue
        args = method_args(m, out, data, s, epoch_steps, corpus)
        fit = ["fit", *args, "--runs_dir", str(out / "runs")]
        trained = m.test_only or m.key  # the run whose last checkpoint is tested
        ckpt = SHIPPED if trained == "shipped" else out / "runs" / "study" / trained / "checkpoints" / "last.ckpt"
        test = ["test", *args, "--runs_dir", str(out / "test_runs"), "--ckpt_path", str(ckpt), *decoding]
        start = time.perf_counter()
        print(f"[{time.perf_counter() - t0:6.0f} s] {m.label}: {'test' if m.test_only else 'fit'} ...", flush=True)
        if not m.test_only:
            run_cli(fit, log, threads)
            commands.append("python -m experiments " + shlex.join(fit))
        run_cli(test, log, threads)
        commands.append("python -m experiments " + shlex.join(test))
        metrics = read_test_metrics(out / "test_runs" / "study" / m.key)
        tested = json.loads((out / "test_runs" / "study" / m.key / "summary.json").read_text())
        summary = {} if trained == "shipped" else json.loads(
            (out / "runs" / "study" / trained / "summary.json").read_text())
        results[m.key] = {"label": m.label, "test": metrics,
                          "fit_wall_s": None if m.test_only else summary.get("wall_time_s"),
                          "total_wall_s": time.perf_counter() - start, "steps": summary.get("global_step"),
                          "trainable_params": summary.get("max_trainable_params"),
                          "tta_s_per_audio_s": tested.get("tta", {}).get("extra_s_per_audio_s")}
        shown = " | ".join(f"{d} WER {metrics.get(f'test/{d}/wer', float('nan')):.3f} "
                           f"CER {metrics.get(f'test/{d}/cer', float('nan')):.3f}"
                           f" (beam+LM WER {metrics.get(f'test_beam/{d}/wer', float('nan')):.3f})"
                           for d in ("target", "source"))
        print(f"         {shown} ({time.perf_counter() - start:.0f} s)", flush=True)
    compare = ["compare", str(out / "runs"), "--out", str(out / "compare"), "--format", "md"]
    compare_test = ["compare", str(out / "test_runs"), "--out", str(out / "compare_test"), "--format", "md"]
    for command in (compare, compare_test):
        run_cli(command, log)
        commands.append("python -m experiments " + shlex.join(command))
    study = {"corpus": corpus, "settings": s.__dict__, "epoch_steps": epoch_steps, "results": results,
             "commands": commands, "wall_s": time.perf_counter() - t0, "notes": notes or []}
    (out / "study.json").write_text(json.dumps(study, indent=2), encoding="utf-8")
    write_study_report(out, study)
    return study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--quick", action="store_true", help="tiny corpus and a few steps per method (smoke run)")
    parser.add_argument("--corpus", choices=["demo", "tone"], default="demo",
                        help="demo: speech, starting from the shipped model (default); tone: the generated pair")
    parser.add_argument("--only", default="",
                        help="comma-separated methods by letter or key, e.g. b,e or b_source_only,e_dann (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a Settings field")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1; with its DataLoader worker a run keeps 2 cores busy); "
                             "0 = torch default")
    parser.add_argument("--notes", type=Path, default=None, help="markdown file appended to the report as Notes")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT/report.md from OUT/study.json")
    args = parser.parse_args(argv)
    s = Settings.for_corpus(args.corpus, args.quick)
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(s, key, type(getattr(s, key))(value))
    only = [k for k in args.only.split(",") if k] or None
    notes = args.notes.read_text(encoding="utf-8").splitlines() if args.notes else None
    if args.report_only:
        study = json.loads((args.out / "study.json").read_text(encoding="utf-8"))
        study["notes"] = notes if notes is not None else study.get("notes", [])
        print(f"wrote {write_study_report(args.out.resolve(), study)}")
        return
    study = run_study(args.out.resolve(), args.corpus, s, only, args.threads or None, notes)
    print(f"wrote {args.out / 'report.md'} ({study['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
