"""Fine-tuning: pretrained backbone + new (or the checkpoint's) CTC head, discriminative learning rates.

Everything trainable trains from step 0 unless a ``GradualUnfreezing`` callback freezes groups.
Per-group peak lrs: head/featurizer ``lr``; top backbone group ``backbone_lr``; each group below
it ``layer_decay`` times the one above (see ``optim.base_learning_rates``).

``freeze_feature_encoder=True`` keeps the backbone's conv feature encoder (layer group
``feature_encoder_group``) frozen for the whole run, as in wav2vec 2.0 fine-tuning: its
parameters get ``requires_grad=False`` here, so its param group starts inactive (lr 0, no AdamW
state) and ``GradualUnfreezing`` treats it as pinned (never unfrozen, even by ``"all"``).

``adapter={"kind": "lora", "targets": ["q", "v"], "rank": 8}`` (or ``"kind": "bottleneck"``, see
``peft.py``): parameter-efficient fine-tuning. Every backbone weight is frozen (pinned, bit-identical
after training); the adapters train in the layer group of the layer they sit in, with the head.

``init_head_from``: a speechxfer checkpoint whose head initialises this one for a fresh fit; when
its tokenizer differs from this model's, the rows of the symbols both share (blank included) are
copied and new symbols start fresh (``vocab_transfer.py``).

Forgetting: a run that validates on "target" should validate on "source" too (a warning says so when
it does not); source replay (``ASRDataModule(replay=..., replay_ratio=...)``) limits it.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from datamodules.base import speech_datamodule
from lightning_modules.backbones.base import Backbone
from lightning_modules.ctc import CTCModule
from lightning_modules.peft import AdapterConfig, Adapters
from lightning_modules.vocab_transfer import transfer_head


class FineTuneCTC(CTCModule):
    """``CTCModule`` + optional permanently frozen feature encoder, adapters, head transfer; other args as ``CTCModule``."""

    def __init__(self, backbone: Backbone, tokenizer: dict, freeze_feature_encoder: bool = False,
                 feature_encoder_group: str = "feature_extractor", adapter: dict[str, Any] | None = None,
                 init_head_from: str | None = None, **kwargs) -> None:
        super().__init__(backbone, tokenizer, **kwargs)
        if freeze_feature_encoder:
            groups = dict(self.backbone.layer_groups())
            if feature_encoder_group not in groups:
                raise ValueError(f"freeze_feature_encoder: {type(backbone).__name__} has no layer group "
                                 f"{feature_encoder_group!r}; its groups are {list(groups)}")
            groups[feature_encoder_group].requires_grad_(False)
        self.adapters = Adapters(self.backbone, AdapterConfig(**adapter)) if adapter is not None else None
        if self.adapters is not None:
            self.backbone.requires_grad_(False)

    def backbone_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The backbone's groups; with adapters, each group also holds the adapters inside it."""
        groups = super().backbone_layer_groups()
        if self.adapters is None:
            return groups
        extra = self.adapters.params_by_group()
        return [(name, params + extra.get(name, [])) for name, params in groups]

    def on_fit_start(self) -> None:
        """Forgetting is measured by validating on the source domain too: warn when a target run does not."""
        dm = speech_datamodule(self.trainer)
        domains = dm.val_domains if dm is not None else []
        if "target" in domains and "source" not in domains:
            rank_zero_warn("FineTuneCTC: this run validates on 'target' but not on 'source', so forgetting of the "
                           "source domain is not measured; add a 'source' val set (see data/demo_target_subset.yaml)")

    def setup(self, stage: str) -> None:
        """Pretrained backbone (core), then the head from ``init_head_from`` for a fresh fit."""
        fresh = self.fresh_fit(stage)
        super().setup(stage)
        if fresh and self.hparams.init_head_from:
            transfer_head(self.head, self.hparams.init_head_from, self.tokenizer)
