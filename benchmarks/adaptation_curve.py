"""Few-shot adaptation curve on the demo corpus: meta-learned init vs joint training vs the source model vs scratch.

    python benchmarks/adaptation_curve.py --out runs/adaptation          # from experiments/models/synth_en_bigru.ckpt
    python benchmarks/adaptation_curve.py --source-ckpt runs/quickstart/latest/checkpoints/last.ckpt --out runs/adaptation
    python benchmarks/adaptation_curve.py --source-ckpt ... --out /tmp/adaptation --quick     # smoke run (minutes)

Tasks are the demo corpus's voices (``experiments/data/demo_meta.yaml``: 16 meta-train voices, 1 meta-val,
3 held-out flite voices as meta-test). Every model is trained by the real CLI from the demo configs plus
the overrides below, then ``speechxfer test`` runs the SAME few-shot protocol on its last checkpoint (fixed
budget, no model selection): for each held-out voice one fixed query set of 9 utterances and nested
support sets of k = 0, 1, 2, 5, 10 utterances, adapted by 5 SGD steps at lr 0.05 on all layer groups
(``EpisodicDataModule`` ``adapt_*``; chosen on the meta-val voice with the source model):

    fomaml   demo_meta.yaml        MetaCTC, first-order MAML from the source encoder, S outer steps of 4 episodes
                                   (inner loop: 1 SGD step at lr 0.05 on all layer groups)
    reptile  demo_meta.yaml        MetaCTC, Reptile, same steps
    joint    demo_meta_joint.yaml  ordinary CTC batches over the meta-train voices from the source encoder,
                                   the same number of utterance forward+backward passes as fomaml
    scratch  demo_meta_joint.yaml  the same joint training from random init (the source's architecture)
    source   the source model itself, no task training (plain fine-tuning on the k shots)

Budget: a FOMAML outer step passes tasks_per_step x (inner_steps x shots + queries) = 4 x (4 + 3) = 28
utterances forward and backward; joint/scratch get steps = S x 28 / (utterances per pooled batch). Every
data config takes the source checkpoint's tokenizer (``tokenizer_path``), so the source head is usable at
k = 0 and every model decodes the same symbols; utterances it cannot encode (the quickstart tokenizer has
no apostrophe: 3 demo utterances) are counted skips (``on_bad_input: skip``). Writes ``OUT/report.md`` (WER/CER per k and method,
budgets, wall times, the exact commands), ``OUT/curve.json`` and ``OUT/compare/`` (``speechxfer compare``
of the test runs: ``adaptation_curve.png``, ``fewshot.csv``). A method finished by an earlier invocation
with the same ``--out`` is reused (``OUT/results/<method>.json``; delete it to rerun that method).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, run_cli, write_yaml  # noqa: E402
from datamodules.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from lightning_modules.checkpoint_io import read_checkpoint  # noqa: E402

METHODS = ("fomaml", "reptile", "joint", "scratch", "source")
SHIPPED_SOURCE = REPO / "experiments" / "models" / "synth_en_bigru.ckpt"  # the shipped source model, when present


@dataclass
class Settings:
    outer_steps: int = 200        # S: MetaCTC outer steps (each: tasks_per_step episodes)
    inner_steps: int = 1          # MetaCTC's inner loop while meta-training (lr adapt_lr, all layer groups)
    adapt_steps: int = 5          # the few-shot protocol of every test (experiments/data/demo_meta.yaml)
    adapt_lr: float = 0.05
    adapt_groups: list[str] = field(default_factory=lambda: ["all"])
    test_shots: list[float] = field(default_factory=lambda: [0, 1, 2, 5, 10])
    validations: int = 4          # per training run
    queries: int = 9              # query utterances per held-out voice (20 per voice, at most 10 shots, and a
                                  # source tokenizer without "'" skips one utterance of a test voice)
    steps_per_epoch: int = 25     # meta-epoch length

    @classmethod
    def quick(cls) -> Settings:
        return cls(outer_steps=2, test_shots=[0, 2], validations=1, steps_per_epoch=2)


def data_configs(out: Path, source: Path, s: Settings) -> tuple[Path, Path, int, float]:
    """(episodes data yaml, pooled data yaml, joint steps, utterances per pooled batch) under ``out/configs``."""
    from lightning_modules.backbones.base import build_backbone

    backbone = build_backbone(read_checkpoint(source)["speechxfer"]["backbone_config"])
    common = {"tokenizer_path": str(source), "cache_dir": str(out / "cache"),
              "num_workers": 1, "steps_per_epoch": s.steps_per_epoch, "test_shots": s.test_shots,
              "adapt_steps": s.adapt_steps, "adapt_lr": s.adapt_lr, "adapt_groups": s.adapt_groups,
              "eval_queries": s.queries, "on_bad_input": "skip"}
    paths = {}
    for name in ("demo_meta", "demo_meta_pooled"):
        config = yaml.safe_load((REPO / "experiments" / "data" / f"{name}.yaml").read_text())
        config["init_args"].update(copy.deepcopy(common))
        paths[name] = write_yaml(out / "configs" / f"data_{name}.yaml", config)
    dm = instantiate_data(paths["demo_meta_pooled"])
    dm.output_lengths = backbone.output_lengths  # the label checks count the source backbone's frames
    dm.setup("fit")
    per_batch = len(dm.train_cuts()) / dm.train_batches_per_epoch(0, 1)
    passes = dm.tasks_per_step * (s.inner_steps * dm.shots + dm.queries)
    return paths["demo_meta"], paths["demo_meta_pooled"], max(1, round(s.outer_steps * passes / per_batch)), per_batch


def instantiate_data(path: Path):
    from jsonargparse import ArgumentParser

    from datamodules import SpeechDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(SpeechDataModule, "data")
    return parser.instantiate(parser.parse_args(["--data", str(path)])).data


def budget_args(steps: int, per_epoch: int | None, validations: int) -> list[str]:
    """max_steps = ``steps``; validation ``validations`` times (every n epochs, or every n steps)."""
    if per_epoch:  # episodes: a known epoch length
        epochs = math.ceil(steps / per_epoch)
        return ["--trainer.max_epochs", str(epochs), "--trainer.max_steps", str(steps),
                "--trainer.check_val_every_n_epoch", str(max(1, epochs // validations))]
    return ["--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps), "--trainer.check_val_every_n_epoch",
            "null", "--trainer.val_check_interval", str(max(1, steps // validations))]


def source_model_config(out: Path, source: Path) -> Path:
    """A ``--model`` config that rebuilds the source checkpoint's module (its weights come from ``--ckpt_path``)."""
    ckpt = read_checkpoint(source)
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k != "tokenizer" and not k.startswith("_")}
    backbone = {"class_path": "lightning_modules.backbones.CheckpointBackbone", "init_args": {"path": str(source)}}
    return write_yaml(out / "configs" / "source_model.yaml", {"class_path": ckpt["speechxfer"]["module_class"],
                                                               "init_args": {"backbone": backbone, **hparams}})


def method_args(method: str, out: Path, source: Path, episodes: Path, pooled: Path, joint_steps: int,
                s: Settings) -> list[str]:
    """Config + overrides of ``method``'s fit (its test adds ``--data`` of the pooled config + ``--ckpt_path``)."""
    backbone_path = ["--model.init_args.backbone.init_args.path", str(source)]
    if method in ("fomaml", "reptile"):
        return ["--config", str(REPO / "experiments" / "demo_meta.yaml"), "--data", str(episodes), *backbone_path,
                "--model.init_args.algorithm", method, "--model.init_args.inner_steps", str(s.inner_steps),
                "--model.init_args.inner_lr", str(s.adapt_lr),
                *budget_args(s.outer_steps, s.steps_per_epoch, s.validations)]
    joint = ["--config", str(REPO / "experiments" / "demo_meta_joint.yaml"), "--data", str(pooled),
             *budget_args(joint_steps, None, s.validations)]
    if method == "joint":
        return joint + backbone_path
    backbone = read_checkpoint(source)["speechxfer"]["backbone_config"]
    scratch = write_yaml(out / "configs" / "scratch_backbone.yaml", {"model": {"init_args": {"backbone": backbone}}})
    return joint + ["--config", str(scratch)]


def run(out: Path, source: Path, s: Settings, methods: list[str], threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    log, t0 = out / "benchmark.log", time.perf_counter()
    episodes, pooled, joint_steps, per_batch = data_configs(out, source, s)
    results, commands = {}, []
    for method in methods:
        done = out / "results" / f"{method}.json"
        if done.is_file():  # finished by an earlier invocation with the same --out (delete it to rerun)
            results[method], method_commands = json.loads(done.read_text())
            commands += method_commands
            print(f"{method}: reused {done}", flush=True)
            continue
        common = ["--experiment", "adaptation", "--run_name", method, "--wandb", "false"]
        start, before = time.perf_counter(), len(commands)
        print(f"[{start - t0:6.0f} s] {method} ...", flush=True)
        if method == "source":
            args, ckpt, fit_s, steps = ["--config", str(REPO / "experiments" / "demo_meta_joint.yaml"),
                                        "--model", str(source_model_config(out, source))], source, 0.0, 0
        else:
            args = method_args(method, out, source, episodes, pooled, joint_steps, s)
            fit = ["fit", *args, *common, "--runs_dir", str(out / "runs")]
            run_cli(fit, log, threads)
            commands.append("python -m experiments " + " ".join(fit))
            ckpt = out / "runs" / "adaptation" / method / "checkpoints" / "last.ckpt"
            summary = json.loads((out / "runs" / "adaptation" / method / "summary.json").read_text())
            fit_s, steps = summary["wall_time_s"], summary["global_step"]
        test = ["test", *args, "--data", str(pooled), *common, "--runs_dir", str(out / "test_runs"),
                "--ckpt_path", str(ckpt)]
        run_cli(test, log, threads)
        commands.append("python -m experiments " + " ".join(test))
        tested = json.loads((out / "test_runs" / "adaptation" / method / "summary.json").read_text())["test"]
        results[method] = {"steps": steps, "fit_wall_s": fit_s, "test": tested}
        write_json_atomic(done, [results[method], commands[before:]])
        shown = ", ".join(f"k{k:g} {100 * tested[f'test/fewshot/k{k:g}/wer']:.1f}" for k in s.test_shots)
        print(f"         WER % {shown} ({time.perf_counter() - start:.0f} s)", flush=True)
    compare = ["compare", str(out / "test_runs"), "--out", str(out / "compare"), "--format", "md"]
    run_cli(compare, log, threads)
    commands.append("python -m experiments " + " ".join(compare))
    curve = {"source_checkpoint": str(source), "settings": asdict(s), "joint_steps": joint_steps,
             "utterances_per_pooled_batch": per_batch, "results": results, "commands": commands,
             "wall_s": time.perf_counter() - t0}
    write_json_atomic(out / "curve.json", curve)
    write_text_atomic(out / "report.md", report(curve))
    return curve


def report(curve: dict) -> str:
    s, results = curve["settings"], curve["results"]
    shots = s["test_shots"]
    lines = ["# Few-shot adaptation curve (demo corpus, held-out flite voices)", "",
             f"Source model: `{curve['source_checkpoint']}`. Protocol: per held-out voice {s['queries']} query utterances, "
             f"k support utterances, {s['adapt_steps']} SGD step(s) at lr {s['adapt_lr']} on layer groups "
             f"{s['adapt_groups']}. Test query WER % (CER %), last checkpoint of a fixed budget.", "",
             "| method | steps | " + " | ".join(f"k={k:g}" for k in shots) + " | fit wall s |",
             "|---|---|" + "---|" * len(shots) + "---|"]
    for method, r in results.items():
        cells = [f"{100 * r['test'][f'test/fewshot/k{k:g}/wer']:.1f} ({100 * r['test'][f'test/fewshot/k{k:g}/cer']:.1f})"
                 for k in shots]
        lines.append(f"| {method} | {r['steps']} | " + " | ".join(cells) + f" | {r['fit_wall_s']:.0f} |")
    lines += ["", f"joint/scratch steps: {curve['joint_steps']} (utterances per pooled batch: "
              f"{curve['utterances_per_pooled_batch']:.1f}); settings: `{json.dumps(s)}`; total "
              f"{curve['wall_s']:.0f} s.", "", "![adaptation curve](compare/adaptation_curve.png)", "", "Commands:", ""]
    lines += [f"    {c}" for c in curve["commands"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-ckpt", type=Path, default=SHIPPED_SOURCE,
                        help=f"source model (any speechxfer checkpoint); default: the shipped {SHIPPED_SOURCE}")
    parser.add_argument("--out", type=Path, default=Path("runs/adaptation"))
    parser.add_argument("--quick", action="store_true", help="2 outer steps, k in {0, 2}: a smoke run")
    parser.add_argument("--only", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override a Settings field")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUT/report.md from OUT/curve.json")
    args = parser.parse_args(argv)
    if args.report_only:
        write_text_atomic(args.out / "report.md", report(json.loads((args.out / "curve.json").read_text())))
        return
    if not args.source_ckpt.is_file():
        parser.error(f"--source-ckpt {args.source_ckpt}: no such file (train one: speechxfer fit --config "
                     "experiments/quickstart.yaml, then --source-ckpt runs/quickstart/latest/checkpoints/last.ckpt)")
    s = Settings.quick() if args.quick else Settings()
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(s, key, json.loads(value) if isinstance(getattr(s, key), list) else type(getattr(s, key))(value))
    methods = [m for m in args.only.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}; choose from {METHODS}")
    curve = run(args.out.resolve(), args.source_ckpt.resolve(), s, methods, args.threads)
    print(f"wrote {args.out / 'report.md'} ({curve['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
