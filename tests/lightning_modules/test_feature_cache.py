"""FeatureCache: hits equal recomputation, every namespace/key part matters, writes are atomic."""

from __future__ import annotations

import json
import logging
import os

import pytest
import soundfile as sf
import torch

from lightning_modules.backbones import ScratchEncoder
from lightning_modules.feature_cache import (
    FeatureCache,
    pad_features,
    stack_hidden,
    to_backbone_output,
)
from tests.corpus_factory import make_librispeech

LAYERS = [0, 1]


def audio_key(path, offset=0.0, duration=None) -> str:
    """The batch's ``audio_keys`` format, ``path|size|mtime_ns|offset|duration`` (as the data layer writes it)."""
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{offset}|{duration}"


# Tiny models run fastest single-threaded, and other test runs share the CPU cores.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ScratchEncoder(n_mels=40, conv_channels=8, hidden=32, num_layers=2).eval()


@pytest.fixture
def utterances(tmp_path):
    """Two real FLAC files of different lengths: (paths, audio (2, T), lengths (2,))."""
    make_librispeech(tmp_path / "data", {"dev-clean": 4})
    paths = sorted((tmp_path / "data").rglob("*.flac"))
    paths = [paths[0], paths[-1]]  # "hot cat", "red a dog" (seed 0)
    waves = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in paths]
    assert len(waves[0]) != len(waves[1])
    return paths, torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([len(w) for w in waves])


def features(encoder, audio, lengths):
    """(B, T', L, F) features of the cached layers and their lengths (B,)."""
    with torch.no_grad():
        out = encoder(audio, lengths)
    return stack_hidden(out.hidden_states, LAYERS), out.lengths


def cache_for(root, encoder, layers=LAYERS, sample_rate=16000):
    return FeatureCache.for_backbone(root, encoder, layers, sample_rate)


def test_hit_returns_recomputed_features(tmp_path, encoder, utterances):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    cache = cache_for(tmp_path / "cache", encoder)
    assert cache.get(keys) is None
    feats, frames = features(encoder, audio, lengths)
    cache.put(keys, feats, frames)
    cached = cache.get(keys)
    assert [c.shape for c in cached] == [(int(n), len(LAYERS), encoder.output_dim) for n in frames]
    padded, cached_lengths = pad_features(cached)
    assert torch.equal(cached_lengths, frames) and padded.dtype == torch.float32
    torch.testing.assert_close(padded, feats, atol=2e-3, rtol=1e-3)  # float16 storage
    recomputed = features(encoder, audio, lengths)[0]
    torch.testing.assert_close(padded, recomputed, atol=2e-3, rtol=1e-3)
    output = to_backbone_output(padded, cached_lengths)
    assert len(output.hidden_states) == len(LAYERS) and output.hidden_states[1].shape == feats[:, :, 1].shape
    assert (cache.stats["hits"], cache.stats["misses"], cache.stats["writes"]) == (2, 2, 2)
    assert cache.hit_rate() == 0.5
    namespace = json.loads((cache.dir / "namespace.json").read_text())
    assert namespace["namespace"] == {"backbone": encoder.identity, "layers": LAYERS, "sample_rate": 16000}


def test_stores_only_valid_frames_as_float16(tmp_path, encoder, utterances):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    cache = cache_for(tmp_path, encoder)
    feats, frames = features(encoder, audio, lengths)
    cache.put(keys, feats, frames)
    short = int(frames.argmin())
    raw = torch.load(cache.path(keys[short]), weights_only=True)
    assert raw.dtype == torch.float16 and raw.shape[0] == int(frames[short]) < feats.size(1)
    assert raw.untyped_storage().nbytes() == raw.numel() * 2  # not a view of the batch tensor


def test_partial_batch_is_a_miss(tmp_path, encoder, utterances):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    cache = cache_for(tmp_path, encoder)
    feats, frames = features(encoder, audio, lengths)
    cache.put(keys[:1], [feats[0, : int(frames[0])]])  # list form, already trimmed
    assert keys[0] in cache and keys[1] not in cache
    assert cache.get(keys) is None
    assert len(cache.get(keys[:1])) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"backbone": "other-backbone"},
        {"layers": [1]},
        {"sample_rate": 8000},
    ],
)
def test_changing_the_namespace_misses(tmp_path, encoder, utterances, change):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    base = {"backbone": encoder.identity, "layers": LAYERS, "sample_rate": 16000}
    cache = FeatureCache(tmp_path, base)
    cache.put(keys, *features(encoder, audio, lengths))
    assert FeatureCache(tmp_path, base).get(keys) is not None
    other = FeatureCache(tmp_path, {**base, **change})
    assert other.dir != cache.dir and other.get(keys) is None


def test_editing_an_audio_file_misses(tmp_path, encoder, utterances):
    paths, audio, lengths = utterances
    cache = cache_for(tmp_path / "cache", encoder)
    keys = [audio_key(p) for p in paths]
    cache.put(keys, *features(encoder, audio, lengths))
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new_keys = [audio_key(p) for p in paths]
    assert new_keys[0] != keys[0] and new_keys[1] == keys[1]
    assert cache.get(new_keys) is None
    assert audio_key(paths[1], offset=0.5, duration=1.0) != keys[1]  # segments of one file differ


def test_failed_write_leaves_no_partial_file(tmp_path, encoder, utterances, monkeypatch):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    cache = cache_for(tmp_path, encoder)
    feats, frames = features(encoder, audio, lengths)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.put(keys, feats, frames)
    monkeypatch.undo()
    leftovers = [p for p in cache.dir.rglob("*") if p.is_file() and p.name != "namespace.json"]
    assert leftovers == []
    assert cache.get(keys) is None


def test_corrupt_entry_is_counted_logged_and_recomputed(tmp_path, encoder, utterances, caplog):
    paths, audio, lengths = utterances
    keys = [audio_key(p) for p in paths]
    cache = cache_for(tmp_path, encoder)
    cache.put(keys, *features(encoder, audio, lengths))
    cache.path(keys[1]).write_bytes(b"not a tensor")
    with caplog.at_level(logging.WARNING):
        assert cache.get(keys) is None
    assert cache.stats["corrupt"] == 1 and not cache.path(keys[1]).exists()
    assert "unreadable entry" in caplog.text and str(cache.path(keys[1])) in caplog.text


def test_values_overflowing_float16_are_kept_in_float32(tmp_path):
    cache = FeatureCache(tmp_path, {"backbone": "x", "layers": [0], "sample_rate": 16000})
    big = torch.tensor([[[1e6, -2.5]]])  # (T'=1, L=1, F=2)
    cache.put(["k"], [big])
    assert torch.equal(cache.get(["k"])[0], big) and cache.stats["fp32_entries"] == 1


def test_put_validates_its_input(tmp_path):
    cache = FeatureCache(tmp_path, {"backbone": "x", "layers": [0], "sample_rate": 16000})
    with pytest.raises(ValueError, match="lengths are required"):
        cache.put(["a"], torch.zeros(1, 3, 1, 2))
    with pytest.raises(ValueError, match="1 keys but 2"):
        cache.put(["a"], torch.zeros(2, 3, 1, 2), torch.tensor([3, 3]))
