"""``speechxfer adapt``: adapt any checkpoint to one speaker / task from a few labelled utterances.

    speechxfer adapt --ckpt model.ckpt --support support.tsv --steps 5 --lr 0.05 --out adapted.ckpt
    speechxfer adapt --ckpt model.ckpt --support clips/ --groups head top:1 --out adapted.ckpt
    speechxfer adapt --ckpt model.ckpt --data experiments/data/demo_meta.yaml --task e6176ecb --shots 5 --out adapted.ckpt

Support, one of:

- ``--support``: audio files (or folders of them), each with its transcript in ``<stem>.txt`` next to
  it, and/or ``.tsv`` lists of ``<audio path>\\t<transcript>`` lines (paths relative to the list);
- ``--data`` + ``--task``: a YAML with one ``class_path``/``init_args`` -- a corpus (e.g.
  ``datamodules.CommonVoiceCorpus``) or an ``EpisodicDataModule`` (its corpora, task key and seed) --
  and a task name or unique prefix (``--task-key``, default speaker; the datamodule's own key). With an
  ``EpisodicDataModule`` the support of ``--shots k`` is exactly the one its few-shot test uses for
  that task (never its query utterances).

``--shots k`` keeps k support utterances (seeded order; default: all). The adaptation is the one of
``lightning_modules.adaptation``: SGD on the support CTC loss over ``--groups`` for ``--steps`` steps at
``--lr`` (defaults: the checkpoint's own recipe -- ``MetaCTC``: its inner loop -- else required).
The adapted checkpoint keeps the module class, hyper-parameters and tokenizer, records the adaptation
under ``checkpoint["speechxfer"]["adaptation"]`` and drops the optimizer / scheduler state (it is a
model, not a resume point). k = 0 or 0 steps: the output is a byte-identical copy of the input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules import errors as E
from datamodules.atomic import torch_save_atomic, write_bytes_atomic
from datamodules.corpus_base import Corpus, make_cut
from datamodules.dataset import SpeechDataset, check_labels
from datamodules.episodic import EpisodicDataModule
from datamodules.probe import probe_recording
from datamodules.tasks import eval_episode, group_tasks, resolve_names
from experiments.commands import tool_parser
from experiments.transcribe import AUDIO_SUFFIXES, expand_inputs
from lightning_modules.checkpoint_io import read_checkpoint

DROPPED_KEYS = ("optimizer_states", "lr_schedulers")


def support_from_files(paths: Sequence[str], policy: E.BadInputPolicy) -> list[Any]:
    """Cuts of the given audio files / folders (transcript in ``<stem>.txt``) and ``.tsv`` lists."""
    pairs: list[tuple[Path, str | None, str]] = []  # (audio, transcript or None, where it was named)
    for raw in paths:
        if Path(raw).suffix == ".tsv":
            for lineno, line in enumerate(Path(raw).read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    audio, _, text = line.partition("\t")
                    pairs.append((Path(raw).parent / audio.strip(), text.strip(), f"{raw}:{lineno}"))
        else:
            pairs += [(f, None, str(f)) for f in expand_inputs([raw]) if f.suffix.lower() in AUDIO_SUFFIXES]
    cuts = []
    for audio, text, where in pairs:
        if text is None:
            sidecar = audio.with_suffix(".txt")
            text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        if not text:
            policy.bad(where, E.EMPTY_TEXT, f"no transcript for {audio} (a <stem>.txt next to it or a .tsv line)")
        elif not audio.is_file():
            policy.bad(where, E.MISSING_FILE, f"{audio}: no such file")
        elif (rec := probe_recording(audio, str(audio), policy, None)) is not None:
            cuts.append(make_cut(rec, text, "support", "", {"corpus": "files"}))
    return cuts


def load_data(path: str) -> Corpus | EpisodicDataModule:
    """The corpus or episodic datamodule a ``class_path``/``init_args`` YAML describes."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=Corpus | EpisodicDataModule)
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return parser.instantiate_classes(parser.parse_object({"data": config})).data


def support_from_data(data: Corpus | EpisodicDataModule, task: str, task_key: str | None, shots: int | None,
                      seed: int, model: Any) -> tuple[list[Any], str]:
    """(support cuts, full task name) of ``task`` in a corpus or episodic datamodule."""
    if isinstance(data, EpisodicDataModule):
        if task_key not in (None, data.task_key):
            raise ValueError(f"--task-key {task_key} but the datamodule groups tasks by {data.task_key}")
        tasks = data.tasks()[0]
        name = resolve_names([task], sorted(tasks), "--task")[0]
        plan = data.task_episode(name, len(tasks[name]) if shots is None else shots)
        return list(data.cuts_of(plan.support)), plan.task
    cuts, skipped, examples = check_labels(data.cuts(), model.tokenizer, model.backbone.output_lengths, "skip")
    if skipped:
        print(f"warning: skipped {sum(skipped.values())} support utterance(s): {dict(skipped)}; first: "
              f"{'; '.join(examples.values())}", file=sys.stderr)
    tasks, _ = group_tasks(cuts, task_key or "speaker")
    name = resolve_names([task], sorted(tasks), "--task")[0]
    utts = tasks[name]
    plan = eval_episode(name, utts, len(utts) if shots is None else shots, 0, "utterances", seed)
    by_id = {c.id: c for c in cuts}
    return [by_id[i] for i in plan.support], name


def write_adapted(ckpt: Path, fast: dict[str, torch.Tensor], record: dict, out: Path) -> Path:
    """``ckpt`` with the adapted weights, the adaptation record and no optimizer/scheduler state."""
    checkpoint = read_checkpoint(ckpt)  # weights only
    state = checkpoint["state_dict"]
    missing = sorted(set(fast) - set(state))
    if missing:
        raise ValueError(f"{ckpt}: adapted parameters not in the checkpoint's state_dict: {missing[:5]}")
    for name, weight in fast.items():
        state[name] = weight.detach().to(state[name].device, state[name].dtype).clone()
    for key in DROPPED_KEYS:
        checkpoint.pop(key, None)
    checkpoint["speechxfer"] = {**checkpoint["speechxfer"], "adaptation": record}
    return torch_save_atomic(checkpoint, out)


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("adapt", __doc__)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by speechxfer fit (any method)")
    parser.add_argument("--out", required=True, type=Path, help="adapted checkpoint to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--support", nargs="+", help="audio files/folders (+ <stem>.txt) or .tsv lists")
    source.add_argument("--data", help="corpus or EpisodicDataModule YAML (with --task)")
    parser.add_argument("--task", help="task (speaker, accent, ...) name or unique prefix in --data")
    parser.add_argument("--task-key", help="what a task is in --data (default: speaker / the datamodule's)")
    parser.add_argument("--shots", type=int, help="support utterances to use (default: all)")
    parser.add_argument("--steps", type=int, help="SGD steps (default: the checkpoint's recipe)")
    parser.add_argument("--lr", type=float, help="SGD lr (default: the checkpoint's recipe)")
    parser.add_argument("--groups", nargs="+", help="layer groups to adapt: head, top:k, all, names (default: head)")
    parser.add_argument("--seed", type=int, default=0, help="order of the support utterances (--shots)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data and not args.task:
        print("error: --data needs --task", file=sys.stderr)
        return 2
    from lightning_modules import load_model
    from lightning_modules.adaptation import adapted_weights, support_loss

    model = load_model(args.ckpt, map_location=args.device)
    policy = E.BadInputPolicy("skip", "support")
    if args.data:
        cuts, task = support_from_data(load_data(args.data), args.task, args.task_key, args.shots, args.seed, model)
    else:
        cuts, task = support_from_files(args.support, policy), "files"
        cuts = cuts[: args.shots] if args.shots is not None else cuts
        if policy.summary():
            print(f"warning: {policy.summary()}", file=sys.stderr)
    recipe = model.adaptation_recipe().updated({"steps": args.steps, "lr": args.lr, "groups": args.groups})
    if not cuts or recipe.steps == 0:
        write_bytes_atomic(args.out, args.ckpt.read_bytes())
        print(f"0 support utterances / 0 steps: {args.out} is an unchanged copy of {args.ckpt}")
        return 0
    recipe = recipe.checked(f"{args.ckpt} ({type(model).__name__})")
    from lhotse import CutSet

    batch = SpeechDataset(model.tokenizer)[CutSet.from_cuts(cuts)]
    batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    fast = adapted_weights(model, batch, recipe)
    with torch.no_grad():
        before, after = float(support_loss(model, {}, batch)), float(support_loss(model, fast, batch))
    record = {"source_checkpoint": str(args.ckpt), "task": task, "support": [c.id for c in cuts],
              "steps": recipe.steps, "lr": recipe.lr, "group_lrs": dict(recipe.group_lrs or {}),
              "groups": list(recipe.groups or ["head"]), "support_loss": [before, after]}
    write_adapted(args.ckpt, fast, record, args.out)
    print(f"adapted {len(fast)} tensors ({', '.join(record['groups'])}) on {len(cuts)} utterance(s) of {task[:24]}: "
          f"support loss {before:.3f} -> {after:.3f}; wrote {args.out}")
    return 0
