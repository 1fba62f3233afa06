"""Every ``speechxfer`` command, one line each: the registry behind ``speechxfer --help``.

    speechxfer --help              # this list
    speechxfer fit --help          # LightningCLI's options for a training command
    speechxfer transcribe --help   # a tool's options, with examples

Training commands are LightningCLI's; tools are modules whose ``main(argv)`` runs them. A tool's
summary and examples live once, in its module docstring: the first line is the summary printed
here, the docstring's first paragraph (summary + example commands) heads the tool's ``--help``
(:func:`tool_parser`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
from pathlib import Path

TRAINING = {  # name -> (summary, example)
    "fit": ("train or resume a run from an experiment YAML", "speechxfer fit --config experiments/quickstart.yaml"),
    "validate": ("one validation pass of a checkpoint (WER/CER per domain)",
                 "speechxfer validate --config runs/quickstart/latest/config.yaml "
                 "--ckpt_path runs/quickstart/latest/checkpoints/last.ckpt"),
    "test": ("test a checkpoint: greedy and beam+LM decoders, test-time adaptation, few-shot curves",
             "speechxfer test --config runs/quickstart/latest/config.yaml "
             "--ckpt_path runs/quickstart/latest/checkpoints/last.ckpt"),
    "predict": ("Lightning's predict loop over a datamodule's predict files (speechxfer transcribe wraps it)",
                "speechxfer predict --config runs/quickstart/latest/config.yaml --ckpt_path CKPT"),
}
TOOLS = {  # name -> module whose main(argv) runs it
    "transcribe": "experiments.transcribe",
    "adapt": "experiments.adapt",
    "lm": "experiments.lm",
    "sweep": "experiments.sweep",
    "compare": "experiments.compare",
    "slurm": "experiments.slurm",
}


def _docstring(module: str) -> str:
    """A tool module's docstring, read without importing it (``--help`` stays fast: no torch import)."""
    origin = importlib.util.find_spec(module).origin
    return ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or module


def summary(doc: str) -> str:
    """The docstring's first line without its ````speechxfer name````: prefix."""
    first = doc.strip().splitlines()[0]
    if first.startswith("``speechxfer") and "``:" in first:
        first = first.split("``:", 1)[1]
    first = first.replace("``", "").split(" (speechxfer ")[0].strip().rstrip(".")
    return first[:1].lower() + first[1:]


def tool_parser(name: str, doc: str, **kwargs) -> argparse.ArgumentParser:
    """The argparse parser of tool ``name``: ``--help`` starts with its docstring's summary and examples
    (the paragraphs up to the first indented block of example commands)."""
    head = []
    for paragraph in doc.strip().split("\n\n"):
        if paragraph.strip() != "::":
            head.append(paragraph)
        if paragraph.startswith(" "):
            break
    return argparse.ArgumentParser(prog=f"speechxfer {name}", description="\n\n".join(head),
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def overview() -> str:
    """The text of ``speechxfer --help``: every command, one line each, and where to read more."""
    lines = ["usage: speechxfer COMMAND [options]      (speechxfer COMMAND --help for its options)", "",
             "training (LightningCLI; one YAML per experiment, any key overridable as --a.b=value):"]
    lines += [f"  {name:<11} {text}" for name, (text, _) in TRAINING.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<11} {summary(_docstring(module))}" for name, module in TOOLS.items()]
    lines += ["", "examples:"] + [f"  {example}" for _, example in TRAINING.values()][:2]
    lines += ["  speechxfer transcribe --ckpt runs/quickstart/latest/checkpoints/last.ckpt clip.flac"]
    return "\n".join(lines)
