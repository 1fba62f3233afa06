"""Speech corpora as lhotse ``CutSet``s: one ``SAMPLE_RATE`` (16 kHz) cut per utterance.

``Corpus`` (``corpus_base.py``) scans once, reading audio headers only (+ a tail decode that
catches truncated files), caches the manifest as lhotse ``jsonl.gz`` keyed by a fingerprint of
the sources (``manifest_cache.py``), and subsets deterministically (``max_minutes`` + ``seed``).

Bad-input policy (``on_bad_input``), reasons in ``datamodules/errors.py``:

- ``"error"``: the first problem raises ``BadInputError("<file>[:line]: <reason>: <detail>")``;
- ``"skip"``: the item is dropped, counted in ``corpus.skipped[reason]`` and reported in one
  WARNING summary line (also on cache hits);
- either way, a corpus with no usable utterance left raises ``no_usable_utterances``.

Audio policies (``datamodules/probe.py``, the same for ``speechxfer transcribe``): multichannel
files are kept as lhotse ``MultiCut``s, downmixed to mono (channel mean) when loaded and counted in
``corpus.notes["multichannel_audio"]``; an unexpected sample rate (e.g. an 8 kHz FLAC in
LibriSpeech) is resampled lazily to 16 kHz and counted in ``corpus.notes``; a 0-byte file, 0-sample
audio, an unreadable or a truncated file are bad input.
"""

from datamodules.commonvoice import CommonVoiceCorpus
from datamodules.batch import SAMPLE_RATE
from datamodules.corpus_base import Corpus, subset_by_minutes
from datamodules.errors import BadInputError, OOVError
from datamodules.librispeech import LibriSpeechCorpus

__all__ = [
    "SAMPLE_RATE",
    "BadInputError",
    "CommonVoiceCorpus",
    "Corpus",
    "LibriSpeechCorpus",
    "OOVError",
    "subset_by_minutes",
]
