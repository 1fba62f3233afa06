"""The CTC length rule, stated once, and the frame counts it is checked with.

A CTC alignment of a label needs one encoder frame per token plus one blank frame between two equal
neighbouring tokens. ``min_frames`` is that rule: the data layer drops (or reports) utterances that
cannot satisfy it before sampling (``dataset.check_labels``), and the CTC core counts the ones that
still reach it (``train/ctc_infeasible``, ``ctc_infeasible``).

Frame counts come from the model's backbone, ``Backbone.output_lengths(samples) -> frames`` (the
exact conv arithmetic), never from a frame rate: ``floor(duration · fps)`` is optimistic (a 1 s clip
gives 49 frames in wav2vec 2.0, not 50) and a hand-set rate can simply be wrong. The datamodule gets
that function from the model it trains (``ASRDataModule.encoder_frames``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from datamodules.batch import lengths_to_mask

FrameCounter = Callable[[Tensor], Tensor]  # (N,) int64 samples -> (N,) int64 frames: Backbone.output_lengths


def min_frames(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) fewest frames each label needs: tokens + equal neighbours. targets (B, S), padded; lengths (B,)."""
    valid = lengths_to_mask(target_lengths, targets.shape[1])[:, 1:]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & valid).sum(1)
    return target_lengths + repeats


def ctc_infeasible(frames: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) bool: fewer encoder ``frames`` than the label needs (``min_frames``)."""
    return frames < min_frames(targets, target_lengths)


def padded(id_lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token-id lists -> targets (B, S) padded with 0, target_lengths (B,)."""
    lengths = torch.tensor([len(ids) for ids in id_lists], dtype=torch.long)
    targets = torch.zeros(len(id_lists), max(int(lengths.max()), 1) if len(id_lists) else 1, dtype=torch.long)
    for row, ids in zip(targets, id_lists):
        row[:len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    return targets, lengths


@torch.no_grad()
def frames_and_needs(samples: Sequence[int], id_lists: Sequence[Sequence[int]], output_lengths: FrameCounter,
                     max_speed: float = 1.0) -> tuple[list[int], list[int]]:
    """Encoder frames of each utterance (at its fastest speed perturbation) and the frames its label needs.

    ``samples``: 16 kHz sample counts; ``max_speed`` > 1 when speed perturbation may shorten a clip to
    ``floor(samples / max_speed)`` samples.
    """
    shortest = torch.tensor([int(n // max_speed) for n in samples], dtype=torch.long)
    frames = output_lengths(shortest).long().cpu()
    targets, lengths = padded(id_lists)
    return frames.tolist(), min_frames(targets, lengths).tolist()
