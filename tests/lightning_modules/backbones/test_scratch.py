"""ScratchEncoder options: padded frontend (frame counts, padding invariance), GRU layers, normalisation."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.backbones import ScratchEncoder, build_backbone
from tests.corpus_factory import tone_speech

pytestmark = pytest.mark.usefixtures("one_thread")
VARIANTS = {
    "default": {},
    "bigru_none": {"kind": "bigru", "normalize": "none"},
    "bilstm_mean_unpadded": {"kind": "bilstm", "normalize": "mean", "center": False, "conv_padding": False},
    "sub2_utterance": {"subsampling": 2, "normalize": "utterance", "proj_norm": False},
}


def batch(texts=("the big dog ran far", "cat")) -> tuple[torch.Tensor, torch.Tensor]:
    waves = [torch.from_numpy(tone_speech(t, seed=i)) for i, t in enumerate(texts)]
    lengths = torch.tensor([len(w) for w in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def make(**kwargs) -> ScratchEncoder:
    torch.manual_seed(0)
    return ScratchEncoder(n_mels=40, conv_channels=8, hidden=32, num_layers=2, **kwargs).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_invariant_and_lengths_exact(name):
    model = make(**VARIANTS[name])
    audio, lengths = batch()
    with torch.no_grad():
        padded = model(audio, lengths)
        assert torch.equal(padded.lengths, model.output_lengths(lengths))
        for i in range(2):
            alone = model(audio[i:i + 1, :int(lengths[i])], lengths[i:i + 1])
            n = int(alone.lengths[0])
            assert n == int(padded.lengths[i]) == alone.hidden_states[-1].shape[1]
            for h_pad, h_alone in zip(padded.hidden_states, alone.hidden_states):
                torch.testing.assert_close(h_pad[i, :n], h_alone[0], atol=2e-5, rtol=1e-4)
                assert h_pad[i, n:].abs().sum() == 0
    assert build_backbone(model.config()).config() == model.config()


def test_padded_frontend_keeps_frames_of_short_clips():
    """0.29 s (a short isolated word): 8 frames at 25/s with the padded frontend, 6 without; never fewer
    than ``floor(seconds * frames_per_second)``, the estimate the datamodule's too-short check uses."""
    samples = torch.arange(2000, 48001, 37)
    padded, unpadded = ScratchEncoder(), ScratchEncoder(center=False, conv_padding=False)
    assert int(padded.output_lengths(torch.tensor([4640]))) == 8
    assert int(unpadded.output_lengths(torch.tensor([4640]))) == 6
    estimate = torch.floor(samples / 16000 * padded.frames_per_second)
    assert bool((padded.output_lengths(samples) >= estimate).all())
    assert bool((unpadded.output_lengths(samples) < estimate).any())


def test_default_signal_reaches_the_recurrent_layers():
    """The projection LayerNorm gives the first recurrent layer unit-scale input whatever the frontend
    init; its output is not the ~0.05-std signal of the unnormalised default-init stack."""
    audio, lengths = batch()
    with torch.no_grad():
        normed = make()(audio, lengths)
        plain = make(proj_norm=False)(audio, lengths)
    n = int(normed.lengths[0])
    assert normed.hidden_states[0][0, :n].std() > 2 * plain.hidden_states[0][0, :n].std()


def test_rejects_unknown_options():
    with pytest.raises(ValueError, match="kind must be"):
        ScratchEncoder(kind="transformer")
    with pytest.raises(ValueError, match="normalize must be"):
        ScratchEncoder(normalize="global")
