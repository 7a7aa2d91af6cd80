"""The inference fast path (`optimize_for_inference`): parity with fp32 eager, batch-norm folding, dtype choice."""

import json
import os

import pytest
import torch

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, inference
from modeling_epng.packed_linear import EpngPackedLinear, pack_linear_weights
from modeling_epng.visual_encoder import EpngFrozenBatchNorm2d

MAX_PROBABILITY_ERROR = 1e-2


def make_model(**overrides):
    """A tiny model whose batch norms have non-trivial statistics (the defaults would make folding a no-op)."""
    torch.manual_seed(0)
    model = EpngForPanopticNarrativeGrounding(EpngConfig.tiny(**overrides)).eval()
    for module in model.modules():
        if isinstance(module, EpngFrozenBatchNorm2d | torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model


def make_inputs(height, width, num_phrases, batch_size=2, seq_len=16):
    generator = torch.Generator().manual_seed(height + num_phrases)
    input_ids = torch.randint(1000, 2000, (batch_size, seq_len), generator=generator)
    phrase_ids = torch.full((batch_size, seq_len), -1)
    for phrase in range(num_phrases):
        phrase_ids[:, 1 + 2 * phrase : 3 + 2 * phrase] = phrase
    return {
        "pixel_values": torch.randn(batch_size, 3, height, width, generator=generator),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "phrase_ids": phrase_ids,
        "phrase_mask": torch.ones(batch_size, num_phrases, dtype=torch.bool),
    }


@pytest.mark.parametrize("freeze_backbone_batch_norm", [True, False])
def test_fast_path_matches_fp32_across_image_sizes_and_phrase_counts(freeze_backbone_batch_norm):
    reference = make_model(freeze_backbone_batch_norm=freeze_backbone_batch_norm)
    fast = make_model(freeze_backbone_batch_norm=freeze_backbone_batch_norm)
    # bf16 asked for explicitly, so that the test covers it on CPUs where "auto" picks fp32 too.
    assert fast.optimize_for_inference(dtype="bf16") is fast
    settings = fast.inference_settings
    assert (settings.dtype, settings.channels_last, settings.compiled) == ("bf16", True, False)
    norms = (EpngFrozenBatchNorm2d, torch.nn.BatchNorm2d)
    assert settings.folded_batch_norms > 0 and not any(isinstance(m, norms) for m in fast.modules())
    assert not fast.training and not any(parameter.requires_grad for parameter in fast.parameters())
    for height, width, num_phrases in [(64, 96, 3), (96, 64, 5)]:
        inputs = make_inputs(height, width, num_phrases)
        with torch.inference_mode():
            expected = reference(**inputs).mask_logits
            actual = fast(**inputs).mask_logits
        assert actual.dtype == torch.float32 and actual.shape == (2, num_phrases, height // 4, width // 4)
        assert (actual.sigmoid() - expected.sigmoid()).abs().max() <= MAX_PROBABILITY_ERROR


def test_folding_alone_is_exact_in_fp32():
    reference, fast = make_model(), make_model()
    fast.optimize_for_inference(dtype="fp32", channels_last=False)
    inputs = make_inputs(64, 64, 2)
    with torch.inference_mode():
        torch.testing.assert_close(fast(**inputs).mask_logits, reference(**inputs).mask_logits, atol=1e-4, rtol=1e-4)


def test_folding_a_training_batch_norm_is_refused():
    model = make_model(freeze_backbone_batch_norm=False).train()
    with pytest.raises(ValueError, match="training mode"):
        inference.fold_batch_norms_into_convolutions(model)


def test_preparing_twice_changes_nothing():
    model = make_model().optimize_for_inference(dtype="fp32")
    settings, forward = model.inference_settings, model.forward
    assert model.optimize_for_inference(dtype="bf16") is model
    assert model.inference_settings is settings and model.forward is forward


@pytest.mark.parametrize(
    "capability, flags, expected",
    [
        ("AVX512", {"avx512f", "avx512_bf16"}, "bf16"),
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "bf16"),
        ("AVX512", {"avx512f", "avx512_vnni"}, "fp32"),
        ("AVX2", {"avx2", "avx512_bf16"}, "fp32"),  # torch would not run its AVX-512 bf16 kernels
        ("DEFAULT", set(), "fp32"),
    ],
)
def test_auto_dtype_is_bf16_only_where_the_cpu_computes_it(monkeypatch, capability, flags, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(inference, "cpu_flags", lambda: flags)
    dtype, reason = inference.resolve_dtype("auto", "cpu")
    assert dtype == expected and capability in reason
    assert inference.resolve_dtype("fp32", "cpu")[0] == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        inference.resolve_dtype("fp16", "cpu")


def test_unchanged_weights_are_not_hashed_again_and_changed_ones_are_refused(tmp_path, monkeypatch):
    """The manifest's sizes and modification times spare the hash; a rewrite of the same size is still refused."""
    model = make_model()
    model.save_pretrained(tmp_path)
    (tmp_path / inference.ARTIFACT_FILES["aoti"]).write_bytes(b"package")  # find_artifact does not open the package
    manifest = {
        "file": inference.ARTIFACT_FILES["aoti"],
        "dtype": "fp32",
        **inference.machine_fingerprint("cpu"),
        "weights_sha256": inference.weights_sha256(tmp_path),
        "weights_stats": inference.weights_stats(tmp_path),
    }
    (tmp_path / inference.MANIFEST_FILE).write_text(json.dumps(manifest))
    model = EpngForPanopticNarrativeGrounding.from_pretrained(tmp_path)
    hashed = []
    real_sha256 = inference.weights_sha256
    monkeypatch.setattr(inference, "weights_sha256", lambda folder: hashed.append(folder) or real_sha256(folder))
    assert inference.find_artifact(model, "fp32") == (
        tmp_path / inference.ARTIFACT_FILES["aoti"],
        "matches this machine",
    )
    assert hashed == []

    weights = tmp_path / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1
    weights.write_bytes(content)  # same size, new content and modification time
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    artifact, reason = inference.find_artifact(model, "fp32")
    assert artifact is None and "weights" in reason and len(hashed) == 1

    content[-1] ^= 1
    weights.write_bytes(content)  # the exported weights again, with a new modification time: hashed, then used
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 2))
    assert inference.find_artifact(model, "fp32")[0] == tmp_path / inference.ARTIFACT_FILES["aoti"] and len(hashed) == 2


def test_fast_path_skips_the_pixel_embeddings_unless_asked():
    reference = make_model()
    fast = make_model().optimize_for_inference(dtype="bf16")
    inputs = make_inputs(64, 96, 3)
    with torch.inference_mode():
        expected = reference(**inputs)
        plain = fast(**inputs)
        asked = fast(**inputs, output_pixel_embeddings=True)
        without = reference(**inputs, output_pixel_embeddings=False)
    assert plain.pixel_embeddings is None and without.pixel_embeddings is None
    torch.testing.assert_close(plain.mask_logits, asked.mask_logits, rtol=0, atol=0)
    torch.testing.assert_close(without.mask_logits, expected.mask_logits, rtol=0, atol=0)
    assert asked.pixel_embeddings.dtype == torch.float32
    assert (
        asked.pixel_embeddings - expected.pixel_embeddings
    ).abs().max() <= 0.05 * expected.pixel_embeddings.abs().max()


def test_weights_stored_in_bf16_compute_what_autocast_computed(monkeypatch):
    inputs = make_inputs(64, 96, 3)
    monkeypatch.setattr(inference, "store_weights_in", lambda module, dtype: None)
    autocast_only = make_model().optimize_for_inference(dtype="bf16")
    monkeypatch.undo()
    stored = make_model().optimize_for_inference(dtype="bf16")
    assert stored.visual_encoder.lateral_convs[0].weight.dtype == torch.bfloat16
    assert stored.phrase_encoder.text_projection.bias.dtype == torch.bfloat16
    assert stored.phrase_encoder.text_encoder.embeddings.word_embeddings.weight.dtype == torch.float32
    with torch.inference_mode():
        expected, actual = autocast_only(**inputs), stored(**inputs)
        tokens = stored.get_token_features(inputs["input_ids"], inputs["attention_mask"])
        expected_tokens = autocast_only.get_token_features(inputs["input_ids"], inputs["attention_mask"])
    assert torch.equal(actual.mask_logits, expected.mask_logits)
    assert torch.equal(actual.phrase_embeddings, expected.phrase_embeddings)
    assert torch.equal(tokens, expected_tokens)


def test_compiled_fast_path_matches_fp32_across_image_sizes_and_phrase_counts():
    torch._dynamo.reset()
    reference = make_model()
    fast = make_model().optimize_for_inference(dtype="bf16", compile=True, use_artifact=False)
    assert fast.inference_settings.compiled
    for height, width, num_phrases in [(64, 96, 3), (96, 64, 5)]:
        inputs = make_inputs(height, width, num_phrases)
        with torch.inference_mode():
            expected = reference(**inputs).mask_logits
            actual = fast(**inputs).mask_logits
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        assert (actual.sigmoid() - expected.sigmoid()).abs().max() <= MAX_PROBABILITY_ERROR


def test_packed_linears_compute_what_the_linears_computed(monkeypatch):
    inputs = make_inputs(64, 96, 3)
    monkeypatch.setattr(inference, "pack_linear_weights", lambda module: 0)
    unpacked = make_model().optimize_for_inference(dtype="bf16")
    monkeypatch.undo()
    packed = make_model().optimize_for_inference(dtype="bf16")
    native = inference.native_bf16_reason("cpu")[0]
    linears = [module for module in packed.modules() if isinstance(module, torch.nn.Linear)]
    assert packed.inference_settings.packed_linears == (len(linears) if native else 0)
    assert all(isinstance(linear, EpngPackedLinear) == native for linear in linears)
    with torch.inference_mode():
        expected = unpacked(**inputs)
        first, second = packed(**inputs), packed(**inputs)  # the weights are packed at the second call
    assert all(hasattr(linear, "_packed_weight") == native for linear in linears)
    for actual in (first, second):
        assert torch.equal(actual.mask_logits, expected.mask_logits)
        assert torch.equal(actual.phrase_embeddings, expected.phrase_embeddings)


def test_a_packed_linear_follows_changes_of_its_weight():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16).bfloat16()
    reference = torch.nn.Linear(32, 16).bfloat16()
    reference.load_state_dict(linear.state_dict())
    assert pack_linear_weights(linear) == 1 and isinstance(linear, EpngPackedLinear)
    hidden_states = torch.randn(2, 5, 32)
    with torch.no_grad():
        for change in (lambda weight: weight.mul_(-2), lambda weight: weight.copy_(torch.randn_like(weight))):
            linear(hidden_states), linear(hidden_states)  # packs the weight before the change
            change(linear.weight)
            reference.weight.copy_(linear.weight)
            expected = torch.nn.functional.linear(hidden_states.bfloat16(), reference.weight, reference.bias)
            for _ in range(2):  # the first call after the change computes unpacked, the second packs again
                torch.testing.assert_close(linear(hidden_states), expected, rtol=1.6e-2, atol=1e-2)
        linear(hidden_states), linear(hidden_states)
        linear.weight = torch.nn.Parameter(torch.zeros_like(linear.weight))
        for _ in range(2):
            assert torch.equal(linear(hidden_states), linear.bias.expand(2, 5, 16))
