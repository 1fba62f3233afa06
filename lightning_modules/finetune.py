"""Fine-tuning: pretrained backbone + new CTC head, discriminative learning rates.

Everything trainable trains from step 0 unless a ``GradualUnfreezing`` callback freezes groups.
Per-group peak lrs: head/featurizer ``lr``; top backbone group ``backbone_lr``; each group below
it ``layer_decay`` times the one above (see ``optim.base_learning_rates``).

``freeze_feature_encoder=True`` keeps the backbone's conv feature encoder (layer group
``feature_encoder_group``) frozen for the whole run, as in wav2vec 2.0 fine-tuning: its
parameters get ``requires_grad=False`` here, so its param group starts inactive (lr 0, no AdamW
state) and ``GradualUnfreezing`` treats it as pinned (never unfrozen, even by ``"all"``).
"""

from __future__ import annotations

from lightning_modules.backbones.base import Backbone
from lightning_modules.ctc import CTCModule


class FineTuneCTC(CTCModule):
    """``CTCModule`` + optional permanently frozen feature encoder; other args as ``CTCModule``."""

    def __init__(self, backbone: Backbone, tokenizer: dict, freeze_feature_encoder: bool = False,
                 feature_encoder_group: str = "feature_extractor", **kwargs) -> None:
        super().__init__(backbone, tokenizer, **kwargs)
        if freeze_feature_encoder:
            groups = dict(self.backbone.layer_groups())
            if feature_encoder_group not in groups:
                raise ValueError(f"freeze_feature_encoder: {type(backbone).__name__} has no layer group "
                                 f"{feature_encoder_group!r}; its groups are {list(groups)}")
            groups[feature_encoder_group].requires_grad_(False)
