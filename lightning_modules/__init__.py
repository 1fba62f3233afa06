"""LightningModules: the CTC core, its three transfer methods, and ``load_model``.

    CTCModule          backbone → featurizer → head → CTC (ctc.py)
    FineTuneCTC        pretrained backbone + new head, discriminative lrs (finetune.py)
    FrozenFeatureCTC   frozen backbone, weighted layer sum, light head, feature cache (frozen.py)
    DANNCTC            domain-adversarial training with gradient reversal (dann.py)
    MetaCTC            meta-learned initialisation for few-shot adaptation: FOMAML / Reptile (meta.py)
    PseudoLabelCTC     self-training on unlabelled target audio: teacher pseudo-labels, noisy student (pseudo_label.py)
    TestTimeAdapter    SUTA test-time adaptation per utterance, weights restored (tta.py)
    load_model(path)   rebuild any of them from a checkpoint alone (checkpoint.py)
    GreedyDecoder / BeamSearchDecoder / build_decoder(DecoderConfig(...), tokenizer)   CTC decoding (decoding.py)
"""

from lightning_modules.checkpoint import load_model
from lightning_modules.ctc import CTCModule
from lightning_modules.dann import DANNCTC
from lightning_modules.decoding import BeamSearchDecoder, DecoderConfig, GreedyDecoder, build_decoder, greedy_decode
from lightning_modules.featurizer import LastLayer, WeightedLayerSum
from lightning_modules.finetune import FineTuneCTC
from lightning_modules.frozen import FrozenFeatureCTC
from lightning_modules.grl import GradientReversal, ganin_lambda, grad_reverse
from lightning_modules.heads import BiLSTMHead, DomainClassifier, LinearHead
from lightning_modules.meta import MetaCTC
from lightning_modules.optim import TransferLRScheduler
from lightning_modules.pseudo_label import PseudoLabelCTC
from lightning_modules.tta import TestTimeAdapter, TTASettings

__all__ = [
    "BeamSearchDecoder", "BiLSTMHead", "CTCModule", "DANNCTC", "DecoderConfig", "DomainClassifier", "FineTuneCTC",
    "FrozenFeatureCTC", "GradientReversal", "GreedyDecoder", "LastLayer", "LinearHead", "MetaCTC", "PseudoLabelCTC",
    "TTASettings", "TestTimeAdapter", "TransferLRScheduler", "WeightedLayerSum", "build_decoder", "ganin_lambda",
    "grad_reverse", "greedy_decode", "load_model",
]
