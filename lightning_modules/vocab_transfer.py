"""Vocabulary transfer: start a new CTC head from a trained one when the vocabularies differ.

A model trained on one language / casing / tokenizer is fine-tuned with another tokenizer: the new
head's output rows of the symbols both vocabularies share (matched by symbol string, the blank
``<blank>`` at id 0 included) are copied from the old head; rows of new symbols keep their fresh
initialisation. Every other head parameter (BiLSTM layers) is copied whole and must have the same
shape. Heads name their output projection ``proj`` (``heads.LinearHead`` / ``heads.BiLSTMHead``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from datamodules.text import tokenizer_from_dict
from lightning_modules.backbones.checkpoint_backbone import read_checkpoint

log = logging.getLogger(__name__)
OUTPUT = "proj."


def shared_rows(old_symbols: list[str], new_symbols: list[str]) -> list[tuple[int, int]]:
    """``(new_id, old_id)`` for every symbol present in both vocabularies, in new-id order."""
    old = {s: i for i, s in enumerate(old_symbols)}
    return [(i, old[s]) for i, s in enumerate(new_symbols) if s in old]


@torch.no_grad()
def copy_head(head: nn.Module, old_state: dict[str, Tensor], rows: list[tuple[int, int]]) -> None:
    """Copy ``old_state`` (the old head's state dict) into ``head``: output rows by ``rows``, the rest whole."""
    own = head.state_dict()
    if set(own) != set(old_state):
        raise ValueError(f"the old head has parameters {sorted(old_state)}, this one {sorted(own)} "
                         "(same head type and size needed)")
    new_ids = torch.tensor([n for n, _ in rows], dtype=torch.long)
    old_ids = torch.tensor([o for _, o in rows], dtype=torch.long)
    for name, value in own.items():
        old = old_state[name].to(value.dtype)
        if name.startswith(OUTPUT):
            if old.shape[1:] != value.shape[1:]:
                raise ValueError(f"head {name}: old {tuple(old.shape)} vs new {tuple(value.shape)} beyond the vocabulary")
            value[new_ids] = old[old_ids]
        elif old.shape != value.shape:
            raise ValueError(f"head {name}: old {tuple(old.shape)} vs new {tuple(value.shape)}")
        else:
            value.copy_(old)


def transfer_head(head: nn.Module, ckpt_path: str | Path, tokenizer) -> list[tuple[int, int]]:
    """Initialise ``head`` from the head of the speechxfer checkpoint ``ckpt_path``; returns the copied rows."""
    ckpt = read_checkpoint(ckpt_path)
    old_tokenizer = (ckpt.get("hyper_parameters") or {}).get("tokenizer")
    if "speechxfer" not in ckpt or not old_tokenizer:
        raise ValueError(f"{ckpt_path}: no tokenizer in checkpoint['hyper_parameters'] (not a speechxfer CTC checkpoint)")
    old_state = {k[len("head."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("head.")}
    if not old_state:
        raise ValueError(f"{ckpt_path}: checkpoint['state_dict'] has no 'head.*' weights")
    old_symbols = tokenizer_from_dict(old_tokenizer).symbols
    rows = shared_rows(old_symbols, tokenizer.symbols)
    try:
        copy_head(head, old_state, rows)
    except ValueError as err:
        raise ValueError(f"init_head_from={ckpt_path}: {err}") from err
    new = [s for s in tokenizer.symbols if s not in set(old_symbols)]
    log.info("head initialised from %s: %d of %d output rows copied; new symbols %s", ckpt_path, len(rows),
             len(tokenizer.symbols), new)
    return rows
