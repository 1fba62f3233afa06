"""A plain PyTorch CTC loop: the baseline the framework's from-scratch recipe must match.

    python benchmarks/plain_ctc_loop.py --root data/synth_words --steps 475

No framework code: its own tiny LibriSpeech-layout reader (soundfile), log-mel (torchaudio), two
stride-2 Conv2d (padded), a 2-layer BiGRU of 128 units per direction, a linear CTC head, AdamW 1e-3,
shuffled batches of 32 utterances, no lr schedule, no normalisation beyond the log. Prints the
held-out (test subset) WER/CER of greedy decoding every ``--eval-every`` steps and at the end, and
the wall time. Flags change one factor at a time for the study in ``benchmarks/study_notes.md``.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio
from torch import nn
from torchmetrics.functional.text import char_error_rate, word_error_rate


def read_subset(root: Path, subset: str) -> list[tuple[torch.Tensor, str]]:
    """[(16 kHz waveform (T,), lowercase transcript)] of ``root/LibriSpeech/<subset>``."""
    items = []
    for trans in sorted((root / "LibriSpeech" / subset).rglob("*.trans.txt")):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            audio, rate = sf.read(trans.parent / f"{uid}.flac", dtype="float32")
            assert rate == 16000, f"{uid}: {rate} Hz"
            items.append((torch.from_numpy(audio), text.lower()))
    return items


class Model(nn.Module):
    def __init__(self, vocab: int, hidden: int = 128, rnn: str = "gru", n_mels: int = 80, norm: str = "none"):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=n_mels)
        self.norm = norm
        self.conv = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU())
        cell = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cell(32 * ((n_mels + 3) // 4), hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T), lengths (B,) -> log-probs (B, T', V), frames (B,)."""
        x = (self.mel(audio) + 1e-6).log().transpose(1, 2)  # (B, T_mel, F)
        frames = lengths // 160 + 1
        if self.norm == "utterance":  # per-utterance CMVN over valid frames
            mask = (torch.arange(x.shape[1])[None, :] < frames[:, None]).unsqueeze(-1).float()
            mean = (x * mask).sum(1, keepdim=True) / frames[:, None, None]
            std = ((((x - mean) * mask) ** 2).sum(1, keepdim=True) / frames[:, None, None]).sqrt()
            x = (x - mean) / (std + 1e-5) * mask
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        for _ in range(2):
            frames = (frames - 1) // 2 + 1
        x = x.permute(0, 2, 1, 3).flatten(2)
        packed = nn.utils.rnn.pack_padded_sequence(x, frames, batch_first=True, enforce_sorted=False)
        x, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return self.out(x).log_softmax(-1), frames


def collate(items, chars):
    audio = nn.utils.rnn.pad_sequence([a for a, _ in items], batch_first=True)
    lengths = torch.tensor([len(a) for a, _ in items])
    targets = [torch.tensor([chars.index(c) + 1 for c in t]) for _, t in items]
    return audio, lengths, torch.cat(targets), torch.tensor([len(t) for t in targets]), [t for _, t in items]


@torch.no_grad()
def evaluate(model, items, chars, batch=64) -> tuple[float, float]:
    model.eval()
    hyps, refs = [], []
    for i in range(0, len(items), batch):
        audio, lengths, _, _, texts = collate(items[i:i + batch], chars)
        log_probs, frames = model(audio, lengths)
        for row, n in zip(log_probs.argmax(-1), frames):
            ids = torch.unique_consecutive(row[:n])
            hyps.append("".join(chars[j - 1] for j in ids.tolist() if j))
        refs += texts
    model.train()
    return float(word_error_rate(hyps, refs)), float(char_error_rate(hyps, refs))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("data/synth_words"))
    p.add_argument("--train", default="train-clean-100")
    p.add_argument("--test", default="test-clean")
    p.add_argument("--steps", type=int, default=475)
    p.add_argument("--batch", type=int, default=32, help="utterances per batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--rnn", choices=("gru", "lstm"), default="gru")
    p.add_argument("--norm", choices=("none", "utterance"), default="none")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    train, test = read_subset(args.root, args.train), read_subset(args.root, args.test)
    chars = sorted({c for _, t in train for c in t})
    model = Model(len(chars) + 1, args.hidden, args.rnn, norm=args.norm)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ctc = nn.CTCLoss(zero_infinity=True)
    start, step, order = time.perf_counter(), 0, []
    while step < args.steps:
        if len(order) < args.batch:
            order = rng.sample(range(len(train)), len(train))
        audio, lengths, targets, target_lengths, _ = collate([train[i] for i in order[:args.batch]], chars)
        order = order[args.batch:]
        log_probs, frames = model(audio, lengths)
        loss = ctc(log_probs.transpose(0, 1), targets, frames, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            wer, cer = evaluate(model, test, chars)
            print(f"step {step:4d}  loss {loss.item():.3f}  {args.test} WER {wer:.3f} CER {cer:.3f}  "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
