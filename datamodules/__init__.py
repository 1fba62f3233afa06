"""Data: corpora (lhotse CutSets), text normalisation and tokenizers, batches and datamodules."""

from datamodules.corpora import CommonVoiceCorpus, Corpus, LibriSpeechCorpus
from datamodules.errors import BadInputError, OOVError
from datamodules.text import CharTokenizer, SentencePieceTokenizer, TextNormalizer, load_tokenizer, tokenizer_from_dict
from datamodules.augment import SpecAugment, WaveformAugmentation
from datamodules.dataset import SpeechDataset
from datamodules.sampling import DurationBucketingSampler
from datamodules.base import SpeechDataModule
from datamodules.asr import ASRDataModule
from datamodules.domain import DomainAdaptationDataModule
from datamodules.episodic import EpisodicDataModule
