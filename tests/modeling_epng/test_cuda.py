"""GPU checks of the fused LPA path, mixed precision and compile.

Marked `cuda`: deselected by default (CI has no GPU), run on a GPU machine with `pytest -m cuda` (or `.ci/gpu-check`).
Selecting them without a CUDA device is a usage error (see conftest), not a silent skip.
"""

import json

import pytest
import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding
from modeling_epng.attention import EpngLocalityPerceptiveAttention
from training.benchmark_timing import MIB, PeakMemory

pytestmark = pytest.mark.cuda

# The paper's communicator width and heads (head dim 96), so the flex kernel runs with the shapes it will meet.
PAPER_ATTENTION = dict(hidden_size=768, fpn_channels=256, num_attention_heads=8, attention_dropout=0.0)


@pytest.fixture(autouse=True)
def isolated_exact_cuda():
    """Each test compiles from a clean dynamo state, and fp32 matmuls stay fp32: TF32 would make comparisons between
    two kernels differ by ~1e-3 for reasons unrelated to LPA."""
    torch._dynamo.reset()
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def lpa_pair(form: str):
    """An LPA layer on CUDA with distinct per-head weights, and a copy of it using the other implementation."""
    config = EpngConfig.tiny(lpa_distance=form, **PAPER_ATTENTION)
    explicit = EpngLocalityPerceptiveAttention(config).cuda()
    with torch.no_grad():
        explicit.distance_weights.copy_(torch.linspace(0.25, 2.0, config.num_attention_heads))
    fused = EpngLocalityPerceptiveAttention(config).cuda()
    fused.load_state_dict(explicit.state_dict())
    fused.implementation = "flex"
    return config, explicit, fused


@pytest.mark.parametrize("form", ["euclidean", "squared"])
def test_flex_equals_explicit_output_and_gradients(form):
    config, explicit, fused = lpa_pair(form)
    height, width = 12, 20  # non-square: row/column recovery from the flat index is exercised
    tokens = torch.randn(2, height * width, config.hidden_size, device="cuda")
    outputs, input_grads = [], []
    for layer in (explicit, fused):
        inputs = tokens.clone().requires_grad_()
        output, _ = layer(inputs, (height, width))
        (output * torch.linspace(-1, 1, output.shape[-1], device="cuda")).sum().backward()
        outputs.append(output)
        input_grads.append(inputs.grad)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(input_grads[1], input_grads[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused.distance_weights.grad, explicit.distance_weights.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fused.q_proj.weight.grad, explicit.q_proj.weight.grad, atol=1e-4, rtol=1e-3)


def training_step_peak_bytes(layer, side: int, batch_size: int, hidden_size: int) -> float:
    """Peak CUDA memory of one forward + backward of `layer` on a side x side grid, above what was allocated before."""
    tokens = torch.randn(batch_size, side * side, hidden_size, device="cuda", requires_grad=True)

    def step():
        layer(tokens, (side, side))[0].sum().backward()

    step()  # warm-up: compiles, caches the prior, allocates the gradients
    return PeakMemory(torch.device("cuda")).measure(step)["peak_memory_increase_mb"] * MIB


def test_flex_training_memory_does_not_grow_with_the_square_of_the_grid():
    config, explicit, fused = lpa_pair("euclidean")
    batch_size, small, large = 2, 24, 48  # 576 and 2304 tokens: 4x the tokens, 16x the (N, N) scores
    scores_bytes = batch_size * config.num_attention_heads * (large * large) ** 2 * 4
    explicit_peak = training_step_peak_bytes(explicit, large, batch_size, config.hidden_size)
    fused_small = training_step_peak_bytes(fused, small, batch_size, config.hidden_size)
    fused_large = training_step_peak_bytes(fused, large, batch_size, config.hidden_size)
    assert explicit_peak >= scores_bytes  # the explicit path keeps (B, heads, N, N) tensors for backward
    # What the fused path keeps (projections, outputs, their gradients) is linear in N: 4x the tokens, at most 4x the
    # memory, plus slack; quadratic growth would be 16x.
    assert fused_large / fused_small < 6
    assert fused_large < explicit_peak / 2


def test_compiled_bf16_model_matches_eager_and_trains():
    sizes = dict(hidden_size=192, fpn_channels=64, num_attention_heads=2)  # 96 channels per head, as in the paper
    config = EpngConfig.tiny(lpa_implementation="flex", **sizes)
    model = EpngForPanopticNarrativeGrounding(config).cuda()
    torch.manual_seed(0)
    inputs = dict(
        pixel_values=torch.randn(2, 3, 128, 160, device="cuda"),
        phrase_features=torch.randn(2, 4, config.text_config.hidden_size, device="cuda"),
        phrase_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool, device="cuda"),
    )
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(**inputs).mask_logits.float()
        compiled = torch.compile(model)(**inputs).mask_logits.float()
    assert eager.shape == (2, 4, 32, 40)  # H/4 x W/4
    torch.testing.assert_close(compiled, eager, atol=0.1, rtol=0.05)

    model.train()
    labels = torch.rand(2, 4, 128, 160, device="cuda") > 0.5
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.compile(model)(**inputs, mask_labels=labels.float()).loss
    loss.backward()
    attention = model.communicator.layers[0].self_attention.attention
    assert torch.isfinite(loss) and attention.distance_weights.grad is not None
    assert torch.isfinite(attention.distance_weights.grad).all()


def test_benchmark_measures_every_cuda_variant(tmp_path):
    from training import benchmark

    path = tmp_path / "report.json"
    benchmark.run(
        ["--tiny", "--device", "cuda", "--batch_sizes", "2", "--dtypes", "fp32", "bf16", "--lpa", "explicit", "flex"]
        + ["--compile", "--channels_last", "--training", "--train_batch_sizes", "2"]
        + ["--iterations", "2", "--warmup", "1", "--json", str(path)]
    )
    report = json.loads(path.read_text())
    assert report["device_type"] == "cuda"
    failed = [m for m in report["measurements"] if m["status"] != "ok"]
    assert not failed, failed  # on CUDA every variant, flex training included, must run
    assert {m["section"] for m in report["measurements"]} == {"inference", "lpa", "training"}
