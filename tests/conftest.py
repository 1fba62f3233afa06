"""Shared test fixtures: a tiny backbone, a char tokenizer, tone-speech batches, an in-memory DataModule.

    tiny_backbone()                       ScratchEncoder conformer, 32 dims, 2 layers, 50 frames/s
    char_tokenizer()                      CharTokenizer over corpus_factory.ALPHABET
    tone_batch(texts, tokenizer, ...)     a batch dict (ARCHITECTURE.md) of tone speech
    TinyDataModule(...)                   fixed in-memory batches; val/test per domain; DANN pairs
    FixedContract                         datamodule contract as fixed class attributes (stand-in datamodules)
    LossRecorder()                        callback collecting the training loss of every step

Fixtures: ``one_thread`` (tiny models run fastest on one thread and the cores are shared),
``tokenizer``, ``tiny_backbone`` (a fresh, seeded backbone per test), ``tiny_batch``.
"""

from __future__ import annotations

import random

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.base import SpeechDataModule
from datamodules.batch import make_batch
from datamodules.text import CharTokenizer
from lightning_modules.backbones.scratch import ScratchEncoder
from tests.corpus_factory import ALPHABET, sentence, tone_speech

QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def make_tiny_backbone(seed: int = 0) -> ScratchEncoder:
    """A CPU-fast, padding-invariant backbone: log-mel, 2x subsampling (50 frames/s), 2 conformer layers."""
    torch.manual_seed(seed)
    return ScratchEncoder(n_mels=40, conv_channels=8, hidden=32, num_layers=2, kind="conformer", subsampling=2,
                          num_heads=2, conv_kernel=7, dropout=0.0)


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer(list(ALPHABET))


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def tone_batch(batch_texts: list[str], tokenizer, shift: float = 0.0, domain: int = 0, labels: bool = True,
               seed: int = 0) -> dict:
    """Batch dict of tone speech for ``batch_texts``; unique ``audio_keys`` per (text, shift, seed)."""
    waves = [torch.from_numpy(tone_speech(t, shift=shift, seed=seed + i)) for i, t in enumerate(batch_texts)]
    ids = [f"d{domain}-s{seed}-{i}" for i in range(len(batch_texts))]
    keys = [f"mem:{t}|{shift}|{seed + i}" for i, t in enumerate(batch_texts)]
    tokens = [tokenizer.encode(t) for t in batch_texts] if labels else None
    return make_batch(waves, ids, keys, domain, batch_texts if labels else None, tokens)


def chunked(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class FixedContract(SpeechDataModule):
    """The contract members as fixed class attributes, for stand-in datamodules (nothing to resume).

    Subclasses set ``tokenizer``, ``val_domains``/``test_domains``, ``labelled_target_minutes``,
    ``batches_per_epoch`` and ``description`` as needed and add their dataloaders.
    """

    tokenizer = None
    val_domains = test_domains = ["source"]
    labelled_target_minutes = 0.0
    batches_per_epoch = 1
    description = {"source": None, "target": None}

    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        return self.batches_per_epoch

    def describe(self) -> dict[str, str | None]:
        return dict(self.description)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class TinyDataModule(SpeechDataModule):
    """In-memory batches behind the datamodule contract (``datamodules.base.SpeechDataModule``).

    ``dann=True`` makes training batches ``{"source": b, "target": b}`` (target shifted by
    ``target_shift``, labelled only if ``target_labels``). ``val_domains`` names the val/test loaders:
    "source" is unshifted, any other name is shifted. Nothing to resume: ``state_dict()`` is empty.
    """

    def __init__(self, tokenizer=None, n_train: int = 8, batch_size: int = 4, n_val: int = 4,
                 val_domains: tuple[str, ...] = ("source",), dann: bool = False, target_labels: bool = False,
                 target_shift: float = 0.5, augments_waveform: bool = False, seed: int = 0,
                 n_val_batches: int = 1) -> None:
        super().__init__()
        self._tokenizer = tokenizer or char_tokenizer()
        self._domains, self._augments = list(val_domains), augments_waveform
        tok = self.tokenizer
        source = [tone_batch(c, tok, seed=seed + 100 * i)
                  for i, c in enumerate(chunked(texts(n_train, seed), batch_size))]
        if dann:
            target = [tone_batch(c, tok, shift=target_shift, domain=1, labels=target_labels, seed=seed + 50 + 100 * i)
                      for i, c in enumerate(chunked(texts(n_train, seed + 1), batch_size))]
            source = [{"source": s, "target": t} for s, t in zip(source, target)]
        self.train_batches = source
        self.val_batches = [  # per domain: n_val_batches batches of n_val utterances
            [tone_batch(texts(n_val, seed + 7 + d + 100 * j), tok, shift=0.0 if name == "source" else target_shift,
                        domain=int(name != "source"), seed=seed + 1000 * (d + 1) + 100 * j)
             for j in range(n_val_batches)]
            for d, name in enumerate(val_domains)
        ]

    @property
    def tokenizer(self) -> CharTokenizer:
        return self._tokenizer

    @property
    def val_domains(self) -> list[str]:
        return self._domains

    @property
    def test_domains(self) -> list[str]:
        return self._domains

    @property
    def augments_waveform(self) -> bool:
        return self._augments

    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        return len(self.train_batches)

    def describe(self) -> dict[str, str | None]:
        return {"source": "tiny tone speech", "target": None}

    @property
    def labelled_target_minutes(self) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_batches, batch_size=None)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(b, batch_size=None) for b in self.val_batches]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


class LossRecorder(pl.Callback):
    """``losses``: the training loss of every optimizer step, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def loss_fell(losses: list[float], ratio: float = 0.7, k: int = 5) -> bool:
    """Mean of the last ``k`` losses below ``ratio`` × mean of the first ``k``."""
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return last < ratio * first


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return char_tokenizer()


@pytest.fixture
def tiny_backbone() -> ScratchEncoder:
    return make_tiny_backbone()


@pytest.fixture
def tiny_batch(tokenizer) -> dict:
    """Three utterances of different lengths (labelled, source domain)."""
    return tone_batch(["the big dog", "cat", "a red box"], tokenizer, seed=3)
