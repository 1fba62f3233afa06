"""Batch helpers, the duration-bucketing sampler (DDP ranks, workers, resume) and augmentation units."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from lhotse import CutSet, Recording
from lhotse.cut import MonoCut
from lhotse.dataset import SimpleCutSampler

from datamodules.augment import SpecAugment, WaveformAugmentation, add_noise_at_snr
from datamodules.batch import check_batch, make_batch, pad_audio, pad_targets
from datamodules.corpora import LibriSpeechCorpus
from datamodules.dataset import SpeechDataset
from datamodules.sampling import (DurationBucketingSampler, check_covers_ranks, estimate_bins, make_loader,
                                  resolve_rank)
from benchmarks.bench_data import padded_fraction
from tests.corpus_factory import make_librispeech

MAX_DURATION = 2.0


def fake_cuts(durations: list[float]) -> CutSet:
    """Metadata-only cuts (never loaded) with the given durations."""
    cuts = []
    for i, d in enumerate(durations):
        rec = Recording(id=f"r{i:03d}", sources=[], sampling_rate=16000, num_samples=int(d * 16000), duration=d)
        cuts.append(MonoCut(id=f"c{i:03d}", start=0.0, duration=d, channel=0, recording=rec))
    return CutSet.from_cuts(cuts)


@pytest.fixture(scope="module")
def corpus_cuts(tmp_path_factory) -> CutSet:
    root = make_librispeech(tmp_path_factory.mktemp("ls"), {"train-clean-100": 24})
    return LibriSpeechCorpus(root, ["train-clean-100"]).cuts(root / "cache")


def epoch_ids(cuts: CutSet, rank: int, world_size: int, num_workers: int = 0, epoch: int = 0, seed: int = 3):
    sampler = DurationBucketingSampler(cuts, MAX_DURATION, num_buckets=4, shuffle=True, seed=seed,
                                       rank=rank, world_size=world_size)
    sampler.set_epoch(epoch)
    loader = make_loader(SpeechDataset(labels=False), sampler, num_workers=num_workers)
    batches = []
    for batch in loader:
        check_batch(batch, labels=False)
        assert float(batch["lengths"].sum()) / 16000 <= MAX_DURATION + 1e-6
        batches.append(batch["ids"])
    return batches, sampler


# -- sampler -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2])
def test_ranks_get_distinct_utterances_and_equal_batch_counts(corpus_cuts, world_size, num_workers):
    per_rank = [epoch_ids(corpus_cuts, r, world_size, num_workers) for r in range(world_size)]
    batches = [b for b, _ in per_rank]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) > 1
    ids = [i for rank_batches in batches for batch in rank_batches for i in batch]
    dropped = per_rank[0][1].dropped_tail_cuts
    assert len(ids) == len(set(ids)) == len(corpus_cuts) - dropped
    assert dropped < world_size
    assert set(ids) <= {c.id for c in corpus_cuts}


def test_same_seed_and_epoch_same_batches_other_epoch_reshuffles(corpus_cuts):
    first, _ = epoch_ids(corpus_cuts, 0, 1, epoch=2)
    again, _ = epoch_ids(corpus_cuts, 0, 1, epoch=2)
    other, _ = epoch_ids(corpus_cuts, 0, 1, epoch=3)
    assert first == again
    assert other != first
    assert sorted(sum(other, [])) == sorted(sum(first, []))


def test_workers_yield_the_same_batches_as_the_main_process(corpus_cuts):
    assert epoch_ids(corpus_cuts, 1, 2, num_workers=2)[0] == epoch_ids(corpus_cuts, 1, 2, num_workers=0)[0]


def test_uneven_end_drops_instead_of_duplicating():
    # 3 one-cut batches over 2 ranks: lhotse would hand rank 1 a duplicate of the last cut.
    cuts = fake_cuts([1.5, 1.5, 1.5])
    out = []
    for rank in range(2):
        sampler = DurationBucketingSampler(cuts, max_duration=1.6, num_buckets=2, rank=rank, world_size=2)
        out.append([[c.id for c in b] for b in sampler])
        assert sampler.dropped_tail_cuts == 1
    assert [len(b) for b in out] == [1, 1]
    ids = [i for rank_batches in out for b in rank_batches for i in b]
    assert len(set(ids)) == 2 and not any("_dup" in i for i in ids)


def eval_batches(cuts: CutSet, world_size: int, max_duration: float = 2.0) -> list[list[list[str]]]:
    """Per simulated rank, the id lists of its evaluation batches."""
    out = []
    for rank in range(world_size):
        sampler = DurationBucketingSampler(cuts, max_duration=max_duration, num_buckets=3, rank=rank,
                                           world_size=world_size, even_batches=False)
        out.append([[c.id for c in batch] for batch in sampler])
        assert sampler.dropped_tail_cuts == 0 and sampler.shard == (rank, world_size)
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n", [3, 5, 7, 11, 24])
def test_evaluation_sampler_covers_every_cut_exactly_once(world_size, n, tmp_path):
    eager = fake_cuts([0.3 + 0.17 * (i % 7) for i in range(n)])
    eager.to_file(tmp_path / "cuts.jsonl.gz")
    for cuts in (eager, CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")):
        per_rank = eval_batches(cuts, world_size)
        ids = [i for rank_batches in per_rank for batch in rank_batches for i in batch]
        assert sorted(ids) == sorted(c.id for c in eager)  # the union is the set, no duplicate
        assert all(len(rank_batches) >= 1 for rank_batches in per_rank)  # n >= world_size here
        for rank, rank_batches in enumerate(per_rank):  # rank r holds cuts r, r + W, ... of the manifest
            assert sorted(i for b in rank_batches for i in b) == [f"c{j:03d}" for j in range(rank, n, world_size)]


def test_evaluation_keeps_the_tail_that_training_drops():
    cuts = fake_cuts([1.5, 1.5, 1.5])  # 3 one-cut batches over 2 ranks
    per_rank = eval_batches(cuts, 2, max_duration=1.6)
    assert [len(b) for b in per_rank] == [2, 1]  # uneven batch counts, nothing dropped
    assert sorted(i for b in per_rank for batch in b for i in batch) == ["c000", "c001", "c002"]


def test_more_ranks_than_cuts():
    cuts = fake_cuts([0.5, 0.7])
    per_rank = eval_batches(cuts, 3)
    assert per_rank[2] == [] and sorted(i for b in per_rank for batch in b for i in batch) == ["c000", "c001"]
    check_covers_ranks(cuts, 2, "dev")
    with pytest.raises(ValueError, match=r"dev has 2 utterance\(s\) for 3 ranks"):
        check_covers_ranks(cuts, 3, "dev")


def test_fast_forward_yields_exactly_the_remaining_batches():
    cuts = fake_cuts([0.5 + 0.1 * (i % 9) for i in range(40)])

    def make():
        return DurationBucketingSampler(cuts, max_duration=3.0, num_buckets=3, shuffle=True, seed=7, rank=1, world_size=2)

    full = make()
    full.set_epoch(4)
    reference = [[c.id for c in b] for b in full]
    assert len(reference) >= 4
    resumed = make()
    resumed.fast_forward(epoch=4, num_batches=3)
    resumed.set_epoch(4)  # Lightning calls this after restoring: same epoch keeps the position
    assert [[c.id for c in b] for b in resumed] == reference[3:]
    resumed.set_epoch(5)  # and a new epoch starts from scratch
    assert len(list(resumed)) > 0


def test_fast_forward_over_a_whole_epoch_moves_to_the_next_one():
    sampler = DurationBucketingSampler(fake_cuts([1.0] * 6), max_duration=2.0, num_buckets=2, shuffle=True, seed=1)
    sampler.set_epoch(8)
    reference = [[c.id for c in b] for b in sampler]
    assert sampler.fast_forward(7, 3) == (8, 0)  # epoch 7 has 3 batches: resume at the start of epoch 8
    sampler.set_epoch(8)
    assert [[c.id for c in b] for b in sampler] == reference
    assert sampler.fast_forward(8, 2) == (8, 2)
    assert [[c.id for c in b] for b in sampler] == reference[2:]


def test_fast_forward_past_the_epoch_end_is_an_error():
    sampler = DurationBucketingSampler(fake_cuts([1.0] * 4), max_duration=2.0, num_buckets=2)
    with pytest.raises(ValueError, match="has only 2 batches"):
        sampler.fast_forward(0, 5)


def test_rank_resolution_and_the_distributed_sampler_guard():
    assert resolve_rank(None, 1, 4) == (1, 4)
    assert resolve_rank(None) == (0, 1)
    connector = SimpleNamespace(use_distributed_sampler=False)
    assert resolve_rank(SimpleNamespace(global_rank=2, world_size=3, _accelerator_connector=connector)) == (2, 3)
    connector.use_distributed_sampler = True
    with pytest.raises(RuntimeError, match="use_distributed_sampler=False"):
        resolve_rank(SimpleNamespace(global_rank=0, world_size=2, _accelerator_connector=connector))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_sets_get_valid_buckets(n):
    cuts = fake_cuts([0.4 * (i + 1) for i in range(n)])
    bins = estimate_bins(cuts, num_buckets=10)
    assert bins == sorted(bins) and len(bins) >= 1
    sampler = DurationBucketingSampler(cuts, max_duration=10.0, num_buckets=10)
    assert sorted(c.id for b in sampler for c in b) == sorted(c.id for c in cuts)


def test_bucketing_pads_far_less_than_random_batching():
    rng = random.Random(0)
    cuts = fake_cuts([rng.uniform(1.0, 16.0) for _ in range(400)])
    bucketed = padded_fraction(DurationBucketingSampler(cuts, max_duration=60.0, num_buckets=20, shuffle=True))
    random_batches = padded_fraction(SimpleCutSampler(cuts, max_duration=60.0, shuffle=True))
    assert bucketed < 0.08 and random_batches > 0.25


# -- batch helpers -------------------------------------------------------------------------------

def test_padding_and_lengths():
    audio, lengths = pad_audio([torch.ones(3), torch.ones(5)])
    assert audio.dtype == torch.float32 and audio.shape == (2, 5)
    assert lengths.tolist() == [3, 5] and audio[0, 3:].abs().sum() == 0
    targets, tl = pad_targets([[4, 2], [7]])
    assert targets.tolist() == [[4, 2], [7, 0]] and tl.tolist() == [2, 1]


def test_make_batch_with_and_without_labels():
    labelled = make_batch([torch.ones(4)], ["a"], ["k"], 1, texts=["hi"], token_ids=[[3, 2]])
    check_batch(labelled, labels=True)
    assert labelled["domain"].tolist() == [1] and labelled["texts"] == ["hi"]
    unlabelled = make_batch([torch.ones(4)], ["a"], ["k"], 0)
    check_batch(unlabelled, labels=False)
    assert not {"targets", "target_lengths", "texts"} & set(unlabelled)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b.pop("ids"), "lacks keys"),
    (lambda b: b.update(audio=b["audio"].double()), "float32"),
    (lambda b: b.pop("targets"), "together"),
    (lambda b: b["targets"].__setitem__((1, 2), 5), "padded with 0"),
    (lambda b: b["targets"].__setitem__((1, 0), 0), "blank"),
])
def test_check_batch_rejects_broken_batches(corrupt, message):
    batch = make_batch([torch.ones(4), torch.ones(2)], ["a", "b"], ["k", "l"], 0,
                       texts=["x", "y"], token_ids=[[1, 2, 3], [4]])
    corrupt(batch)
    with pytest.raises(ValueError, match=message):
        check_batch(batch)


# -- augmentation units --------------------------------------------------------------------------

def test_spec_augment_masks_only_valid_frames_and_only_in_training():
    torch.manual_seed(0)
    features = torch.randn(3, 50, 16) + 10.0  # never 0 by chance
    lengths = torch.tensor([50, 20, 7])
    aug = SpecAugment(time_masks=3, time_width=0.3, feature_masks=2, feature_width=4)
    out = aug(features, lengths)
    masked = out == 0
    assert masked.any()
    for row, n in enumerate(lengths.tolist()):
        assert not masked[row, n:].any()  # padding untouched
        assert torch.equal(out[row, n:], features[row, n:])
    # feature masks are at most 4 channels wide per mask: row 0 columns fully masked <= 2 * 4
    assert int(masked[0].all(dim=0).sum()) <= 8
    assert torch.equal(aug.eval()(features, lengths), features)


def test_spec_augment_time_width_in_frames_is_bounded():
    torch.manual_seed(1)
    aug = SpecAugment(time_masks=1, time_width=5, feature_masks=0)
    out = aug(torch.ones(64, 40, 2), torch.full((64,), 40))
    widths = (out[:, :, 0] == 0).sum(dim=1)
    assert int(widths.max()) <= 5 and int(widths.max()) > 0


def test_noise_is_added_at_the_requested_snr():
    signal = torch.sin(torch.linspace(0, 200, 16000))
    noise = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    mixed = add_noise_at_snr(signal, noise, 10.0)
    snr = 10 * torch.log10(signal.pow(2).mean() / (mixed - signal).pow(2).mean())
    assert abs(float(snr) - 10.0) < 1e-3


def test_waveform_augmentation_switches():
    assert not WaveformAugmentation().enabled
    assert not WaveformAugmentation(speed_factors=[1.0]).enabled
    speed = WaveformAugmentation(speed_factors=[0.9, 1.0, 1.1])
    assert speed.enabled and speed.max_speed == 1.1
    assert WaveformAugmentation(gaussian_noise=True).enabled
