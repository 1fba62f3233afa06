"""Few-shot adaptation of any CTCModule: fast weights, episode evaluation inside Lightning's inference mode."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.adaptation import AdaptationRecipe, adapted_groups, adapted_weights, support_loss
from lightning_modules.ctc import CTCModule
from lightning_modules.meta import MetaCTC
from tests.conftest import QUIET, FixedContract, char_tokenizer, make_tiny_backbone, texts, tone_batch

PROTOCOL = {"steps": 3, "lr": 0.05, "groups": ["head"]}


def episode(tokenizer, shots: int = 3, adapt: dict | None = None) -> dict:
    support = tone_batch(texts(shots, seed=1), tokenizer, seed=1) if shots else None
    return {"support": support, "query": tone_batch(texts(3, seed=2), tokenizer, seed=2), "task": "t", "shots": shots,
            "adapt": adapt or {"steps": None, "lr": None, "groups": None}}


class Episodes(FixedContract):
    """Test loaders of fixed episodes (named like the few-shot test), or of plain batches."""

    tokenizer = char_tokenizer()

    def __init__(self, loaders: dict[str, list]) -> None:
        super().__init__()
        self.loaders = loaders

    @property
    def test_domains(self) -> list[str]:
        return list(self.loaders)

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(items, batch_size=None) for items in self.loaders.values()]


def ctc_module(tokenizer) -> CTCModule:
    return CTCModule(make_tiny_backbone(0), tokenizer.to_dict(), dropout=0.0)


def run_test(module, loaders: dict[str, list]) -> dict[str, float]:
    return pl.Trainer(**QUIET).test(module, datamodule=Episodes(loaders), verbose=False)


def test_k0_episode_scores_its_query_like_a_plain_batch(tokenizer, one_thread):
    module = ctc_module(tokenizer)
    ep = episode(tokenizer, shots=0)
    results = run_test(module, {"fewshot/k0": [ep], "plain": [ep["query"]]})
    assert results[0]["test/fewshot/k0/wer"] == results[1]["test/plain/wer"]
    assert results[0]["test/fewshot/k0/loss"] == pytest.approx(results[1]["test/plain/loss"])


def test_episode_evaluation_adapts_inside_inference_mode_without_touching_the_module(tokenizer, one_thread):
    module = ctc_module(tokenizer)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    results = run_test(module, {"fewshot/k0": [episode(tokenizer, 0, PROTOCOL)],
                            "fewshot/k3": [episode(tokenizer, 3, PROTOCOL)]})
    assert results[1]["test/fewshot/k3/loss"] < results[0]["test/fewshot/k0/loss"]  # 3 shots adapted the head
    for n, p in module.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n


def test_a_module_without_a_recipe_needs_the_protocol(tokenizer):
    with pytest.raises(ValueError, match="CTCModule has no adaptation recipe of its own"):
        run_test(ctc_module(tokenizer), {"fewshot/k3": [episode(tokenizer, 3)]})


def test_meta_module_adapts_with_its_inner_loop_unless_the_protocol_says_otherwise(tokenizer):
    module = MetaCTC(make_tiny_backbone(0), tokenizer.to_dict(), inner_steps=2, inner_lr=0.3, inner_groups=["top:1"],
                     learn_inner_lr=True)
    own = module.adaptation_recipe()
    assert own == AdaptationRecipe(2, 0.3, ("top:1",), {"layer.1": pytest.approx(0.3), "head": pytest.approx(0.3)})
    given = own.updated(PROTOCOL)
    assert (given.steps, given.lr, given.groups, given.group_lrs) == (3, 0.05, ("head",), None)
    assert set(adapted_groups(module, ["all"]).values()) == {"frontend", "layer.0", "layer.1", "head"}  # not inner_lr


def test_adapted_weights_lower_the_support_loss_on_the_chosen_groups(tokenizer):
    module = ctc_module(tokenizer).eval()
    support = episode(tokenizer)["support"]
    fast = adapted_weights(module, support, AdaptationRecipe(5, 0.05, ("top:1",)))
    assert {n.split(".")[0] for n in fast} == {"backbone", "head"}
    assert all(n.startswith(("backbone.layers.1.", "head.")) for n in fast)
    with torch.no_grad():
        assert float(support_loss(module, fast, support)) < float(support_loss(module, {}, support))
    assert adapted_weights(module, support, AdaptationRecipe(0, 0.5)) == {}
    assert adapted_weights(module, None, AdaptationRecipe(5, 0.5)) == {}
