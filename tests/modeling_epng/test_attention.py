"""LPA distance prior, its cache, and the explicit vs fused attention paths."""

import math

import pytest
import torch

from modeling_epng import EpngConfig
from modeling_epng.attention import (
    EpngCrossAttention,
    EpngLocalityPerceptiveAttention,
    flex_fallback_reason,
    lpa_distance_matrix,
    sine_position_embedding,
)
from training.benchmark_timing import MIB, PeakMemory


def test_euclidean_distance_is_truncated():
    distances = lpa_distance_matrix(3, 4, "euclidean", 2.0)
    assert distances.shape == (12, 12)
    assert distances[0, 0] == 0 and distances[0, 1] == 1 and distances[0, 4] == 1
    assert distances[0, 5] == pytest.approx(math.sqrt(2))
    assert distances[0, 2] == 2 and distances[0, 11] == 2
    assert torch.equal(distances, distances.T)


def test_squared_distance_matches_reference_form():
    distances = lpa_distance_matrix(3, 4, "squared", 2.0)
    assert distances[0, 0] == 0 and distances[0, 1] == 1 and distances[0, 4] == 1
    assert distances[0, 5] == 2 and distances[0, 2] == 2


def test_non_square_grid_is_row_major():
    distances = lpa_distance_matrix(2, 5, "euclidean", 10.0)
    # token 7 is row 1, column 2; token 0 is row 0, column 0
    assert distances[7, 0] == pytest.approx(math.sqrt(1 + 4))


def test_distance_matrix_is_cached_per_grid_size():
    attention = EpngLocalityPerceptiveAttention(EpngConfig.tiny())
    first = attention.distance_matrix(4, 6, torch.device("cpu"))
    assert attention.distance_matrix(4, 6, torch.device("cpu")) is first
    assert attention.distance_matrix(6, 4, torch.device("cpu")) is not first


def test_prior_multiplies_logits_per_head():
    config = EpngConfig.tiny(attention_dropout=0.0)
    attention = EpngLocalityPerceptiveAttention(config).eval()
    with torch.no_grad():
        attention.distance_weights.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    tokens = torch.randn(1, 6, config.hidden_size)
    _, probabilities = attention(tokens, (2, 3), output_attentions=True)
    # head 0 has w = 0: every logit is multiplied by 0, so attention is uniform
    assert torch.allclose(probabilities[0, 0], torch.full((6, 6), 1 / 6), atol=1e-6)
    queries = attention.split_heads(attention.q_proj, tokens)[0, 2]
    keys = attention.split_heads(attention.k_proj, tokens)[0, 2]
    logits = queries @ keys.T / math.sqrt(attention.head_dim) * (2.0 * lpa_distance_matrix(2, 3, "euclidean", 2.0))
    assert torch.allclose(probabilities[0, 2], logits.softmax(-1), atol=1e-5)


@pytest.mark.parametrize("form", ["euclidean", "squared"])
def test_flex_path_equals_explicit_path_in_inference(form):
    config = EpngConfig.tiny(lpa_distance=form)
    attention = EpngLocalityPerceptiveAttention(config).eval()
    with torch.no_grad():
        attention.distance_weights.copy_(torch.tensor([0.5, 1.0, 1.5, 2.0]))
    tokens = torch.randn(2, 4 * 6, config.hidden_size)
    with torch.no_grad():
        explicit, _ = attention(tokens, (4, 6))
        attention.implementation = "flex"
        fused, _ = attention(tokens, (4, 6))
    assert torch.allclose(explicit, fused, atol=1e-5)


def test_flex_path_falls_back_to_explicit_for_cpu_training():
    # No attention dropout, so that the missing CPU backward alone makes it fall back.
    config = EpngConfig.tiny(lpa_implementation="flex", attention_dropout=0.0)
    attention = EpngLocalityPerceptiveAttention(config)
    tokens = torch.randn(1, 12, config.hidden_size, requires_grad=True)
    output, _ = attention(tokens, (3, 4))
    output.sum().backward()
    assert attention.distance_weights.grad is not None and torch.isfinite(tokens.grad).all()


def test_flex_fallback_reasons():
    assert "backward" in flex_fallback_reason("cpu", head_dim=96, needs_backward=True)
    assert flex_fallback_reason("cpu", head_dim=12, needs_backward=False) is None  # the CPU kernel takes any head dim
    assert "at least 16" in flex_fallback_reason("cuda", head_dim=12, needs_backward=False)
    assert flex_fallback_reason("cuda", head_dim=96, needs_backward=True) is None
    assert "dropout" in flex_fallback_reason("cuda", head_dim=96, needs_backward=True, dropout=0.1)


def test_flex_path_keeps_attention_dropout_in_training():
    config = EpngConfig.tiny(attention_dropout=0.5)
    attention = EpngLocalityPerceptiveAttention(config).train()
    tokens = torch.randn(1, 12, config.hidden_size)
    outputs = {}
    with torch.no_grad():  # no backward needed: only the dropout keeps flex from running
        for implementation in ("explicit", "flex"):
            attention.implementation = implementation
            torch.manual_seed(0)
            outputs[implementation] = attention(tokens, (3, 4))[0]
        attention.eval()
        without_dropout = attention(tokens, (3, 4))[0]
    assert torch.equal(outputs["flex"], outputs["explicit"])
    assert not torch.allclose(outputs["flex"], without_dropout)


def test_cross_attention_ignores_padding_phrases_and_survives_zero_phrases():
    config = EpngConfig.tiny()
    attention = EpngCrossAttention(config).eval()
    pixels = torch.randn(2, 5, config.hidden_size)
    phrases = torch.randn(2, 3, config.hidden_size)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    output = attention(pixels, phrases, mask)
    changed = phrases.clone()
    changed[0, 2] += 100.0
    assert torch.allclose(output, attention(pixels, changed, mask), atol=1e-6)
    assert torch.equal(output[1], torch.zeros_like(output[1]))


def test_sine_position_embedding_differs_per_position():
    embedding = sine_position_embedding(3, 5, 48)
    assert embedding.shape == (15, 48)
    assert torch.unique(embedding, dim=0).shape[0] == 15


def test_prior_cached_under_inference_mode_still_trains():
    config = EpngConfig.tiny(self_attention_type="lpa")
    attention = EpngLocalityPerceptiveAttention(config)
    tokens = torch.randn(1, 12, config.hidden_size)
    with torch.inference_mode():
        attention(tokens, (3, 4))
    output, _ = attention(tokens.requires_grad_(), (3, 4))
    output.sum().backward()
    assert attention.distance_weights.grad is not None


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_compiled_flex_path_keeps_no_score_matrix_per_head(one_thread):
    config = EpngConfig.tiny(lpa_implementation="flex")
    attention = EpngLocalityPerceptiveAttention(config).eval()
    compiled = torch.compile(attention)
    batch_size, side = 2, 64
    tokens = torch.randn(batch_size, side * side, config.hidden_size)
    scores_bytes = batch_size * config.num_attention_heads * (side * side) ** 2 * 4  # one fp32 (B, heads, N, N)
    host_memory = PeakMemory(torch.device("cpu"))  # the benchmark's: peak resident set of one call (Linux /proc)
    assert host_memory.method == "linux_vmhwm_after_clear_refs"
    with torch.no_grad():
        compiled(tokens, (side, side))  # compiles
        fused_peak = host_memory.measure(lambda: compiled(tokens, (side, side)))["peak_memory_increase_mb"] * MIB
        fused, _ = compiled(tokens, (side, side))
        attention.implementation = "explicit"

        def batched():  # the explicit path of training and of output_attentions: all heads' logits at once
            return attention(tokens, (side, side), output_attentions=True)

        explicit_peak = host_memory.measure(batched)["peak_memory_increase_mb"] * MIB
        per_head_peak = host_memory.measure(lambda: attention(tokens, (side, side)))["peak_memory_increase_mb"] * MIB
        explicit, _ = attention(tokens, (side, side))
    assert torch.allclose(fused, explicit, atol=1e-4)
    assert explicit_peak >= scores_bytes  # the measurement sees the explicit path's (B, heads, N, N) logits
    # Inductor's CPU kernel holds one N x N buffer per thread (measured), not one per batch element and head; the
    # explicit inference path one head's logits and probabilities.
    assert fused_peak < scores_bytes / 4
    assert per_head_peak < scores_bytes / 2


def test_scaled_prior_is_kept_between_no_grad_calls_and_follows_the_weights():
    config = EpngConfig.tiny(self_attention_type="lpa", attention_dropout=0.0)
    attention = EpngLocalityPerceptiveAttention(config).eval()
    tokens = torch.randn(1, 12, config.hidden_size)
    with torch.no_grad():
        first, _ = attention(tokens, (3, 4))
        kept = attention.scaled_prior((3, 4), 0.5, torch.float32)
        assert attention.scaled_prior((3, 4), 0.5, torch.float32) is kept
        attention.distance_weights.mul_(3.0)
        changed, _ = attention(tokens, (3, 4))
    with torch.enable_grad():
        expected, _ = attention(tokens, (3, 4))
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, expected, rtol=0, atol=0)
    assert attention.scaled_prior((3, 4), 0.5, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_one_head_at_a_time_equals_the_batched_attention(dtype):
    config = EpngConfig.tiny(self_attention_type="lpa", attention_dropout=0.0)
    attention = EpngLocalityPerceptiveAttention(config).eval()
    with torch.no_grad():
        attention.distance_weights.copy_(torch.linspace(0.5, 2.0, attention.num_heads))
    tokens = torch.randn(2, 12, config.hidden_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        per_head, _ = attention(tokens, (3, 4))
        batched, probabilities = attention(tokens, (3, 4), output_attentions=True)
    assert probabilities is not None and per_head.dtype == dtype
    torch.testing.assert_close(per_head, batched, rtol=0, atol=0)
