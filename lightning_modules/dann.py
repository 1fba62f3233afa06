"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015) on the CTC core.

Training batches are ``{"source": batch, "target": batch}``. Both go through the shared encoder
(backbone + featurizer); the CTC loss uses the source only (target labels are never read), and
both feed ``GradientReversal`` → ``DomainClassifier`` (source = 0, target = 1)::

    loss = ctc(source) + domain_loss_weight · CE(domain)   with the encoder gradient of CE × −λ

λ follows ``lambda_schedule``: "ganin" λ_p = λ_max·(2/(1+exp(−γp)) − 1) with p = global_step / total
optimizer steps of the fit, or "constant" λ_max. The total is the LR scheduler's ``total_steps``
(``optim.TransferLRScheduler``, checkpointed): λ and the lr decay span one horizon, also after a
resume with another ``max_steps``. Validation/test are the core's (per-domain WER). The domain
classifier is optimised in the "head" param group. ``init_head_from``: a speechxfer checkpoint whose CTC
head starts this one for a fresh fit (with a ``CheckpointBackbone`` of the same file: DANN starts from the
whole source model), as ``FineTuneCTC``'s.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn

from lightning_modules.backbones.base import Backbone
from lightning_modules.ctc import CTCModule
from lightning_modules.grl import GradientReversal, dann_lambda
from lightning_modules.heads import DomainClassifier, domain_loss
from lightning_modules.vocab_transfer import transfer_head


class DANNCTC(CTCModule):
    """``CTCModule`` + gradient-reversed domain classifier; other args as ``CTCModule``.

    ``domain_level``: "utterance" (masked mean pooling) or "frame" (every valid frame classified).
    """

    def __init__(self, backbone: Backbone, tokenizer: dict, lambda_max: float = 1.0,
                 lambda_schedule: Literal["ganin", "constant"] = "ganin", gamma: float = 10.0,
                 domain_level: Literal["utterance", "frame"] = "utterance",
                 domain_hidden: int = 256, domain_loss_weight: float = 1.0, init_head_from: str | None = None,
                 **kwargs) -> None:
        super().__init__(backbone, tokenizer, **kwargs)
        dann_lambda(lambda_schedule, 0.0)  # validate the name now, not at the first step
        self.grl = GradientReversal(0.0)
        self.domain_classifier = DomainClassifier(backbone.output_dim, domain_hidden, 2, domain_level,
                                                  self.hparams.dropout)

    def setup(self, stage: str) -> None:
        """Core setup (pretrained backbone), then the CTC head from ``init_head_from`` for a fresh fit."""
        fresh = self.fresh_fit(stage)
        super().setup(stage)
        if fresh and self.hparams.init_head_from:
            transfer_head(self.head, self.hparams.init_head_from, self.tokenizer)

    @property
    def total_steps(self) -> float:
        """Optimizer steps of the fit: the LR scheduler's (restored from the checkpoint on resume)."""
        return self.lr_schedulers().total_steps

    def on_train_start(self) -> None:
        if self.hparams.lambda_schedule != "constant" and not math.isfinite(self.total_steps):
            raise ValueError("DANNCTC: the ganin lambda schedule needs the number of training steps; set "
                             "trainer.max_steps or trainer.max_epochs (or lambda_schedule: constant)")

    def progress(self) -> float:
        """p in [0, 1]: global step / total optimizer steps of the fit."""
        return min(self.global_step / self.total_steps, 1.0)

    def current_lambda(self) -> float:
        hp = self.hparams
        return dann_lambda(hp.lambda_schedule, self.progress(), hp.lambda_max, hp.gamma)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or not {"source", "target"} <= set(batch):
            raise ValueError("DANNCTC training batches must be {'source': batch, 'target': batch}; got keys "
                             f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        source, target = batch["source"], batch["target"]
        feats_s, len_s = self.encode(source["audio"], source["lengths"], source.get("audio_keys"))
        feats_t, len_t = self.encode(target["audio"], target["lengths"], target.get("audio_keys"))
        ctc = self.ctc_loss(self.classify(feats_s, len_s), len_s, source)
        self.grl.lambd = self.current_lambda()
        logits = [self.domain_classifier(self.grl(f), n) for f, n in ((feats_s, len_s), (feats_t, len_t))]
        dom_loss, dom_acc = domain_loss(logits, [len_s, len_t])
        loss = ctc + self.hparams.domain_loss_weight * dom_loss
        self.log_train_stats(loss, len(len_s))
        size = len(len_s) + len(len_t)
        self.log_dict({"train/ctc_loss": ctc, "train/domain_loss": dom_loss, "train/domain_acc": dom_acc},
                      on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/lambda", self.grl.lambd, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def top_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """As the core, with the domain classifier trained in the "head" group."""
        groups = super().top_layer_groups()
        name, head = groups[-1]
        return groups[:-1] + [(name, head + list(self.domain_classifier.parameters()))]
