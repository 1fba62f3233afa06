"""Gradient reversal, the λ schedule, featurizers, heads and masked pooling."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.featurizer import LastLayer, WeightedLayerSum, build_featurizer, resolve_layers
from lightning_modules.grl import GradientReversal, dann_lambda, ganin_lambda, grad_reverse
from lightning_modules.heads import BiLSTMHead, DomainClassifier, LinearHead, domain_loss, masked_mean

pytestmark = pytest.mark.usefixtures("one_thread")


def test_grl_forward_is_identity_and_backward_is_minus_lambda_times_grad():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 3, dtype=torch.float64)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.allclose(x.grad, -0.7 * upstream)


def test_grl_backward_matches_numeric_jacobian_times_minus_lambda():
    """gradcheck-style: finite differences give the forward Jacobian (I); the analytic VJP is −λ·Jᵀv."""
    lambd, eps = 0.35, 1e-6
    x = torch.randn(6, dtype=torch.float64)
    numeric = torch.stack([(grad_reverse(x + eps * e, lambd) - grad_reverse(x - eps * e, lambd)) / (2 * eps)
                           for e in torch.eye(6, dtype=torch.float64)], dim=1)  # (out, in)
    assert torch.allclose(numeric, torch.eye(6, dtype=torch.float64))
    v = torch.randn(6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(grad_reverse(xr, lambd), xr, grad_outputs=v)
    assert torch.allclose(analytic, -lambd * numeric.T @ v)


def test_grl_module_lambda_is_settable_and_zero_blocks_gradient():
    grl = GradientReversal(2.0)
    x = torch.ones(3, requires_grad=True)
    grl(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))
    grl.lambd = 0.0
    x.grad = None
    grl(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


def test_ganin_lambda_schedule_values():
    assert ganin_lambda(0.0) == 0.0
    assert ganin_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert ganin_lambda(0.5) == pytest.approx(0.986614, abs=1e-6)
    assert ganin_lambda(1.0, lambda_max=0.5) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert ganin_lambda(3.0) == ganin_lambda(1.0)  # progress is clamped
    assert dann_lambda("constant", 0.0, lambda_max=0.3) == 0.3
    with pytest.raises(ValueError, match="lambda_schedule"):
        dann_lambda("linear", 0.5)


def test_weighted_layer_sum_with_one_hot_weights_equals_that_layer():
    layers = [torch.randn(2, 7, 4) for _ in range(3)]
    featurizer = WeightedLayerSum(3)
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([-1e4, 0.0, -1e4]))
    assert torch.equal(featurizer(layers), layers[1])


def test_weighted_layer_sum_starts_as_the_mean_and_weights_sum_to_one():
    layers = [torch.randn(2, 7, 4) for _ in range(4)]
    featurizer = WeightedLayerSum(4)
    assert torch.allclose(featurizer(layers), torch.stack(layers).mean(0), atol=1e-6)
    assert featurizer.layer_weights().sum().item() == pytest.approx(1.0)
    normalized = WeightedLayerSum(4, normalize=True)(layers)
    expected = torch.stack([torch.nn.functional.layer_norm(h, (4,)) for h in layers]).mean(0)
    assert torch.allclose(normalized, expected, atol=1e-6)
    with pytest.raises(ValueError, match="4 layers, got 2"):
        featurizer(layers[:2])


def test_last_layer_and_layer_resolution():
    layers = [torch.randn(1, 2, 3) for _ in range(2)]
    assert LastLayer()(layers) is layers[-1]
    assert isinstance(build_featurizer("weighted", 3), WeightedLayerSum)
    assert resolve_layers(None, 5, "last") == [4]
    assert resolve_layers(None, 3, "weighted") == [0, 1, 2]
    assert resolve_layers([0, -1], 5, "weighted") == [0, 4]
    with pytest.raises(ValueError, match="layer index 5 out of range"):
        resolve_layers([5], 5, "weighted")
    with pytest.raises(ValueError, match="featurizer must be"):
        build_featurizer("mean", 3)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [-50.0], [-50.0]]])
    assert torch.equal(masked_mean(x, torch.tensor([2, 1])), torch.tensor([[2.0], [2.0]]))


@pytest.mark.parametrize("level", ["utterance", "frame"])
def test_domain_classifier_outputs_do_not_depend_on_padding(level):
    torch.manual_seed(0)
    clf = DomainClassifier(4, hidden=8, level=level).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, 9 * torch.randn(1, 3, 4)], dim=1)
    alone, in_padded = clf(x, torch.tensor([5])), clf(padded, torch.tensor([5]))
    if level == "frame":
        in_padded = in_padded[:, :5]
    assert torch.allclose(alone, in_padded, atol=1e-6)


def test_domain_loss_counts_valid_frames_only():
    # source: 2 valid frames predicted correctly, 1 padded frame predicted wrong; target: 1 valid, wrong
    source = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [0.0, 5.0]]])
    target = torch.tensor([[[5.0, 0.0], [0.0, 0.0]]])
    loss, acc = domain_loss([source, target], [torch.tensor([2]), torch.tensor([1])])
    assert acc.item() == pytest.approx(2 / 3)
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(expected.item())
    utt_loss, utt_acc = domain_loss([torch.tensor([[3.0, 0.0]]), torch.tensor([[3.0, 0.0]])],
                                    [torch.tensor([4]), torch.tensor([2])])
    assert utt_acc.item() == 0.5


@pytest.mark.parametrize("head_cls", [LinearHead, BiLSTMHead])
def test_heads_are_padding_invariant(head_cls):
    torch.manual_seed(0)
    head = head_cls(4, 6).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.randn(1, 4, 4)], dim=1)
    assert torch.allclose(head(x, torch.tensor([5])), head(padded, torch.tensor([5]))[:, :5], atol=1e-6)
