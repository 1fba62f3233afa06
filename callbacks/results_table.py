"""``ResultsTable``: the run's validation WER/CER, before and after training, printed when fit ends.

    speechxfer fit --config experiments/quickstart.yaml
    ...
    Results (validation sets, WER / CER %):
    | model                            | target WER | target CER | source WER | source CER |
    |----------------------------------|------------|------------|------------|------------|
    | before training (step 0)         |       61.4 |       27.0 |        6.6 |        2.1 |
    | after: best checkpoint (step 80) |       20.3 |        6.5 |        9.9 |        3.0 |
    run:             runs/quickstart/20250101-120000
    best checkpoint: runs/quickstart/20250101-120000/checkpoints/best-80.ckpt

"before" (``before=True``) is the starting model, e.g. the pretrained source model of a transfer
run, on every validation set before the first optimizer step: ``speechxfer fit`` (``SpeechCLI.before_fit``)
runs ``trainer.validate`` before ``trainer.fit`` when such a callback is configured (loggers off: the
run's metrics, summary and sweeps see only the fit's validations), and this callback keeps what that
validation measured (without the CLI, call ``trainer.validate(model, datamodule)`` before
``trainer.fit`` yourself). "after" is the validation the best checkpoint was saved at:
``BestCheckpoint`` (``callbacks/checkpointing.py``) alone decides which one is best (its ``best_step``;
monitor, then tie-breakers), this callback only keeps every validation's WER/CER by step and prints the
row of that step next to that checkpoint's path; without a ``BestCheckpoint``, the last validation.
Both travel in the checkpoint, so a resumed run still reports its true start. Printed by global rank 0
only, and written to ``<run dir>/results.md``.

With the model's ``eval_decoders`` (e.g. ``beam``: lexicon + n-gram LM) and ``eval_decoders_in_fit: true``,
each of the two rows gets a second row ``..., beam`` with that decoder's WER/CER on the same log-probs
(``val_beam/<domain>/*``); greedy is always the first row and picks the best checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from callbacks.checkpointing import BestCheckpoint
from datamodules.atomic import write_text_atomic
from datamodules.base import speech_datamodule

RESULTS_FILE = "results.md"
METRIC = re.compile(r"^val(?:_(?P<decoder>[a-z0-9]+))?/(?P<domain>[^/]+)/(?P<name>wer|cer)$")


def error_rates(metrics: dict[str, Any]) -> dict[str, float]:
    """``{"val[_<decoder>]/<domain>/wer|cer": value}`` from trainer.callback_metrics (tensors or floats)."""
    return {k: float(v) for k, v in metrics.items() if METRIC.match(k)}


def by_decoder(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"greedy": {"val/<domain>/wer": ...}, "<decoder>": {"val/<domain>/wer": ...}}``: the ``eval_decoders``
    metrics (``val_<decoder>/...``) renamed to the greedy names, one dict per decoder, greedy first."""
    out: dict[str, dict[str, float]] = {"greedy": {}}
    for key, value in metrics.items():
        match = METRIC.match(key)
        out.setdefault(match["decoder"] or "greedy", {})[f"val/{match['domain']}/{match['name']}"] = value
    return out


def format_table(rows: list[tuple[str, dict[str, float]]], domains: list[str]) -> str:
    """Markdown table: one row per (label, metrics), a WER and a CER column (in %) per domain."""
    columns = [f"val/{d}/{m}" for d in domains for m in ("wer", "cer")]
    headers = ["model"] + [f"{d} {m.upper()}" for d in domains for m in ("wer", "cer")]
    cells = [[label] + [f"{100 * values[c]:.1f}" if c in values else "-" for c in columns] for label, values in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(  # noqa: E731
        item.ljust(w) if i == 0 else item.rjust(w) for i, (item, w) in enumerate(zip(items, widths))) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def decoder_rows(label: str, metrics: dict[str, float]) -> list[tuple[str, dict[str, float]]]:
    """One row per decoder: greedy as ``label``, each ``eval_decoders`` entry as ``label, <decoder>``."""
    return [(label if name == "greedy" else f"{label}, {name}", values)
            for name, values in by_decoder(metrics).items() if values]


class ResultsTable(Callback):
    """Prints the before/after table of the module docstring at fit end.

    Args:
        before: report the starting model too (one extra validation pass before training, run by the
            CLI); False reports only the after row.
    """

    def __init__(self, before: bool = False) -> None:
        self.before_enabled = before
        self.before: dict[str, float] = {}
        self.validations: dict[int, dict[str, float]] = {}  # global step -> WER/CER of the fit's validation then

    # --- "before" (a trainer.validate before fit) and every validation of the fit --------------
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = error_rates(trainer.callback_metrics)
        if trainer.state.fn == "validate":
            if self.before_enabled and not self.before:  # (a resumed run restored its "before")
                self.before = metrics
        elif metrics:
            self.validations[int(trainer.global_step)] = metrics

    @staticmethod
    def best_checkpoint(trainer: pl.Trainer) -> BestCheckpoint | None:
        """The run's ``BestCheckpoint``: the one owner of which validation is best."""
        return next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, BestCheckpoint)), None)

    def after(self, trainer: pl.Trainer) -> tuple[str, int, dict[str, float]] | None:
        """(label, step, WER/CER) of the after row: the best checkpoint's validation, else the last one."""
        checkpoint = self.best_checkpoint(trainer)
        if checkpoint is not None and checkpoint.best_step in self.validations:
            return "best checkpoint", checkpoint.best_step, self.validations[checkpoint.best_step]
        if self.validations:
            step = max(self.validations)
            return "last validation", step, self.validations[step]
        return None

    # --- the table -----------------------------------------------------------------------------
    def report(self, trainer: pl.Trainer) -> str:
        """The table, the run directory and the best checkpoint, as printed at fit end."""
        rows = []
        if self.before_enabled and self.before:
            rows += decoder_rows("before training (step 0)", self.before)
        after = self.after(trainer)
        if after is not None:
            which, step, metrics = after
            rows += decoder_rows(f"after: {which} (step {step})", metrics)
        datamodule = speech_datamodule(trainer)
        domains = list(datamodule.val_domains) if datamodule is not None else []
        seen = {METRIC.match(k)["domain"] for _, metrics in rows for k in metrics}
        domains = [d for d in domains if d in seen] + sorted(seen - set(domains))
        checkpoint = self.best_checkpoint(trainer)
        lines = ["Results (validation sets, WER / CER %):", format_table(rows, domains) if rows else "(no validation ran)",
                 f"run:             {Path(trainer.default_root_dir)}"]
        if checkpoint is not None and checkpoint.best_model_path:
            lines.append(f"best checkpoint: {checkpoint.best_model_path}")
        return "\n".join(lines)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            report = self.report(trainer)
            print("\n" + report, flush=True)
            if not trainer.fast_dev_run:
                write_text_atomic(Path(trainer.default_root_dir) / RESULTS_FILE, report + "\n")

    # --- checkpointed state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before, "validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = dict(state_dict.get("before", {}))
        self.validations = {int(step): dict(m) for step, m in state_dict.get("validations", {}).items()}
