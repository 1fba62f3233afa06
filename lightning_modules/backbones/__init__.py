"""Speech encoders behind one contract (see base.py and ARCHITECTURE.md).

``HFBackbone`` imports ``transformers`` only when instantiated (optional extra ``speechxfer[hf]``).
"""

from .base import Backbone, BackboneOutput, build_backbone, lengths_to_mask, zero_padding
from .checkpoint_backbone import CheckpointBackbone
from .hf_backbone import HFBackbone
from .scratch import ScratchEncoder
from .torchaudio_backbone import (
    TorchaudioBackbone,
    available_bundles,
    export_bundle_weights,
    normalize_waveform,
    save_backbone_weights,
)

__all__ = [
    "Backbone",
    "BackboneOutput",
    "CheckpointBackbone",
    "HFBackbone",
    "ScratchEncoder",
    "TorchaudioBackbone",
    "available_bundles",
    "build_backbone",
    "export_bundle_weights",
    "lengths_to_mask",
    "normalize_waveform",
    "save_backbone_weights",
    "zero_padding",
]
