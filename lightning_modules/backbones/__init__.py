"""Speech encoders behind one contract (see base.py and ARCHITECTURE.md).

``HFBackbone`` imports ``transformers`` only when instantiated (optional extra ``speechxfer[hf]``).
"""

from .base import Backbone, BackboneOutput, build_backbone, masked_normalize, zero_padding
from .checkpoint_backbone import CheckpointBackbone
from .hf_backbone import HFBackbone
from .scratch import ScratchEncoder
from .torchaudio_backbone import (
    TorchaudioBackbone,
    available_bundles,
    export_bundle_weights,
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
    "masked_normalize",
    "save_backbone_weights",
    "zero_padding",
]
