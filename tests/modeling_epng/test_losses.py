"""Losses against small hand-computed cases."""

import math

import pytest
import torch

from modeling_epng.losses import (
    mask_bce_loss,
    mask_dice_loss,
    pool_targets,
    prepare_mask_targets,
    semantic_alignment_loss,
)


def test_bce_matches_hand_computation():
    probs = torch.tensor([0.5, 0.9]).view(1, 1, 1, 2)
    targets = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = (-math.log(0.5) - math.log(0.1)) / 2
    assert mask_bce_loss(probs, targets, torch.tensor([[True]])).item() == pytest.approx(expected, rel=1e-6)


def test_bce_averages_per_sample_then_over_samples_and_ignores_padding():
    probs = torch.tensor([[0.5, 0.2], [0.9, 0.9]]).view(2, 2, 1, 1)
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    phrase_mask = torch.tensor([[True, True], [True, False]])
    sample0 = (-math.log(0.5) - math.log(0.2)) / 2
    sample1 = -math.log(0.9)
    assert mask_bce_loss(probs, targets, phrase_mask).item() == pytest.approx((sample0 + sample1) / 2, rel=1e-6)


def test_dice_matches_reference_form():
    probs = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    targets = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    expected = 1 - 2 * 0.5 / (0.5 + 1.0 + 2e-3)
    assert mask_dice_loss(probs, targets, torch.tensor([[True]]), eps=1e-3).item() == pytest.approx(expected, rel=1e-6)


def test_dice_of_empty_prediction_and_target_is_finite():
    zeros = torch.zeros(1, 1, 2, 2)
    assert mask_dice_loss(zeros, zeros, torch.tensor([[True]])).item() == pytest.approx(1.0)


def test_sal_single_phrase_phrase_to_pixel_term():
    phrase = torch.tensor([[[1.0, 0.0]]])
    pixels = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # (B, C, h, w): p1 = [2, 0], p2 = [0, 0]
    positives = torch.tensor([True, False]).view(1, 1, 1, 2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    loss = semantic_alignment_loss(phrase, pixels, positives, torch.tensor([[True]]), temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sal_paper_form_two_phrases():
    phrases = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pixels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    positives = torch.tensor([[True, False], [False, True]]).view(1, 2, 1, 2)
    one_direction = -math.log(math.e / (math.e + 1))
    loss = semantic_alignment_loss(phrases, pixels, positives, torch.tensor([[True, True]]), temperature=1.0)
    assert loss.item() == pytest.approx(2 * one_direction, rel=1e-6)


def test_sal_temperature_divides_scores():
    phrase = torch.tensor([[[1.0, 0.0]]])
    pixels = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    positives = torch.tensor([True, False]).view(1, 1, 1, 2)
    expected = -math.log(math.exp(0.2) / (math.exp(0.2) + 1))
    loss = semantic_alignment_loss(phrase, pixels, positives, torch.tensor([[True]]), temperature=10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_sal_reference_variant_sums_positive_mass():
    phrase = torch.tensor([[[1.0, 0.0]]])
    pixels = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]).view(1, 2, 1, 3)
    positives = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    e2, e1, e0 = math.exp(2), math.exp(1), 1.0
    expected = -math.log((e2 + e1) / (e2 + e1 + e0))
    loss = semantic_alignment_loss(
        phrase, pixels, positives, torch.tensor([[True]]), temperature=1.0, variant="reference"
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    paper = semantic_alignment_loss(phrase, pixels, positives, torch.tensor([[True]]), temperature=1.0)
    assert paper.item() != pytest.approx(loss.item())


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_sal_without_phrases_or_positives_is_finite_with_finite_gradients(variant):
    phrases = torch.randn(2, 3, 4, requires_grad=True)
    pixels = torch.randn(2, 4, 2, 2, requires_grad=True)
    positives = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    positives[1, 0, 0, 0] = True
    phrase_mask = torch.tensor([[False, False, False], [True, True, False]])
    loss = semantic_alignment_loss(phrases, pixels, positives, phrase_mask, temperature=1.0, variant=variant)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(phrases.grad).all() and torch.isfinite(pixels.grad).all()


def test_target_resize_rebinarises_and_pooling_marks_any_covered_pixel():
    labels = torch.zeros(1, 1, 4, 4)
    labels[0, 0, :2, :2] = 1
    resized = prepare_mask_targets(labels, (8, 8), align_corners=False)
    assert resized.dtype == torch.bool and resized.shape == (1, 1, 8, 8)
    assert resized[0, 0, :4, :4].all() and not resized[0, 0, 4:, :].any()
    single = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    single[0, 0, 5, 6] = True
    pooled = pool_targets(single, 4)
    assert pooled.shape == (1, 1, 2, 2) and pooled[0, 0, 1, 1] and pooled.sum() == 1


# One phrase, three pixels with scores (2, 0, -1) at logit scale 1; the first two are the phrase's positives. With
# s the logit scale, softmax probabilities are exp(s x) / Z(s), Z(s) = e^{2s} + 1 + e^{-s}, and E[x] = Z'(s) / Z(s).
TOY_SCORES = (2.0, 0.0, -1.0)


def _toy_sal(scale_value, **kwargs):
    """SAL of the toy case as a function of a learnable logit scale; returns (loss, d loss / d scale)."""
    scale = torch.tensor(scale_value, requires_grad=True)
    phrase = torch.tensor([[[1.0, 0.0]]])
    pixels = torch.tensor([[TOY_SCORES, (1.0, 1.0, 1.0)]]).view(1, 2, 1, 3)  # (B, C, h, w); f . p_j = TOY_SCORES
    positives = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    loss = semantic_alignment_loss(scale * phrase, pixels, positives, torch.tensor([[True]]), **kwargs)
    loss.backward()
    return loss.item(), scale.grad.item()


def _toy_hand():
    z = math.exp(2) + 1 + math.exp(-1)
    mean_score = (2 * math.exp(2) - math.exp(-1)) / z
    # paper, phrase -> pixels: -(log p_1 + log p_2) / 2 = log Z - 1, gradient E[x] - 1; pixel -> phrases is 0 with
    # one phrase (a softmax over one element).
    paper = (math.log(z) - 1, mean_score - 1)
    # reference: -log(p_1 + p_2) = log Z - log(e^2 + 1), gradient E[x] - 2 e^2 / (e^2 + 1).
    reference = (math.log(z) - math.log(math.exp(2) + 1), mean_score - 2 * math.exp(2) / (math.exp(2) + 1))
    return paper, reference


def test_sal_paper_form_value_and_logit_scale_gradient_by_hand():
    (value, gradient), _ = _toy_hand()
    loss, grad = _toy_sal(1.0, temperature=1.0)
    assert loss == pytest.approx(value, rel=1e-5) and grad == pytest.approx(gradient, rel=1e-4)
    # The two positives disagree, so the mean-of-logs form wants a *smaller* scale here: its floor log|G+| = log 2
    # is reached only when both positives get the same probability.
    assert grad > 0
    assert value > math.log(2)
    loss, grad = _toy_sal(1.0, temperature=1.0, direction_reduction="mean")
    assert loss == pytest.approx(value / 2, rel=1e-5) and grad == pytest.approx(gradient / 2, rel=1e-4)


def test_sal_reference_form_value_and_logit_scale_gradient_by_hand():
    _, (value, gradient) = _toy_hand()
    loss, grad = _toy_sal(1.0, temperature=1.0, variant="reference")
    assert loss == pytest.approx(value, rel=1e-5) and grad == pytest.approx(gradient, rel=1e-4)
    assert grad < 0  # the log-of-sum form keeps rewarding a larger scale: its floor is 0, at infinite scale


@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_sal_normalised_forms_value_by_hand_and_no_gradient_on_the_scale(variant):
    # Cosines of the toy case: phrase (1, 0) against pixels (2, 1), (0, 1), (-1, 1).
    cosines = [2 / math.sqrt(5), 0.0, -1 / math.sqrt(2)]
    exps = [math.exp(c / 0.5) for c in cosines]
    z = sum(exps)
    if variant == "paper":
        expected = -(math.log(exps[0] / z) + math.log(exps[1] / z)) / 2
    else:
        expected = -math.log((exps[0] + exps[1]) / z)
    loss, grad = _toy_sal(3.0, temperature=0.5, variant=variant, normalize=True)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert grad == pytest.approx(0.0, abs=1e-6)  # cosines ignore the feature norm: tau alone sets the scale
