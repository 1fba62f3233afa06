"""Fine-tuning: pretrained backbone + new (or the checkpoint's) CTC head, discriminative learning rates.

Everything trainable trains from step 0 unless a ``GradualUnfreezing`` callback freezes groups.
Per-group peak lrs: head/featurizer ``lr``; top backbone group ``backbone_lr``; each group below
it ``layer_decay`` times the one above (see ``optim.base_learning_rates``).

``freeze_feature_encoder=True`` keeps the backbone's conv feature encoder (layer group
``feature_encoder_group``) frozen for the whole run, as in wav2vec 2.0 fine-tuning: its
parameters get ``requires_grad=False`` here, so its param group starts inactive (lr 0, no AdamW
state) and ``GradualUnfreezing`` treats it as pinned (never unfrozen, even by ``"all"``).

``reuse_head=True`` (with a ``CheckpointBackbone``) also starts the featurizer and head from that
checkpoint: the whole source model is fine-tuned, so before the first step the model IS the source
model (its target-domain WER is the "before" of a transfer run). The vocabularies must be the same:
give the datamodule ``tokenizer_path: <the same .ckpt>``.
"""

from __future__ import annotations

from lightning_modules.backbones.base import Backbone, load_state_dict_checked
from lightning_modules.backbones.checkpoint_backbone import CheckpointBackbone, read_checkpoint
from lightning_modules.ctc import CTCModule


class FineTuneCTC(CTCModule):
    """``CTCModule`` + optional permanently frozen feature encoder; other args as ``CTCModule``."""

    def __init__(self, backbone: Backbone, vocab_size: int, freeze_feature_encoder: bool = False,
                 feature_encoder_group: str = "feature_extractor", reuse_head: bool = False, **kwargs) -> None:
        super().__init__(backbone, vocab_size, **kwargs)
        if freeze_feature_encoder:
            groups = dict(self.backbone.layer_groups())
            if feature_encoder_group not in groups:
                raise ValueError(f"freeze_feature_encoder: {type(backbone).__name__} has no layer group "
                                 f"{feature_encoder_group!r}; its groups are {list(groups)}")
            groups[feature_encoder_group].requires_grad_(False)

    def load_pretrained(self) -> None:
        """The backbone's weights; with ``reuse_head`` also the checkpoint's featurizer and head."""
        super().load_pretrained()
        if not self.hparams.reuse_head:
            return
        if not isinstance(self.backbone, CheckpointBackbone):  # (a model rebuilt by load_model never gets here)
            raise ValueError(f"reuse_head=True needs a CheckpointBackbone (the head comes from its checkpoint), "
                             f"got {type(self.backbone).__name__}")
        path = self.backbone.path
        checkpoint = read_checkpoint(path)
        theirs, ours = checkpoint["speechxfer"].get("tokenizer"), self.tokenizer.to_dict()
        if theirs != ours:
            raise ValueError(f"reuse_head: the vocabulary of {path} differs from this run's tokenizer; set the "
                             f"datamodule's tokenizer_path to {path} (or use reuse_head=False for a new head)")
        state = checkpoint["state_dict"]
        for name in ("featurizer", "head"):
            prefix = f"{name}."
            load_state_dict_checked(getattr(self, name), {k[len(prefix):]: v for k, v in state.items()
                                                          if k.startswith(prefix)}, f"{path} ({name})")
