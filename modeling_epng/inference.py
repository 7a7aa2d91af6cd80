"""Inference fast path of EPNG: the settings `EpngForPanopticNarrativeGrounding.optimize_for_inference` applies.

* dtype: bf16 autocast where the hardware computes bf16 natively (a CUDA GPU of compute capability >= 8.0; a CPU
  whose kernels torch runs with AVX-512 and that has `avx512_bf16` or AMX), fp32 elsewhere: without native support
  bf16 is emulated and slower than fp32. The weights of the linear and convolution layers are stored in bf16 (what
  autocast would cast them to at every call), the others (embeddings, norms) stay fp32; the losses run in fp32 and the
  mask logits come back as fp32. Precision: a trained model's logits are large (the demo's up to
  +-147, sums of |phrase x pixel| products up to 155), so rounding the inputs of any one part to bf16's 8 significant
  bits moves a logit near 0 by up to ~0.1-0.3, and the probability of a mask-boundary pixel by 1.6e-2 to 2.8e-2 for
  each part alone, 8.7e-2 for all together (mean 1.7e-4; 1.8e-4 of the mask pixels flip); no part kept in fp32 brings
  that under 1e-2 (`python -m training.benchmark_precision`). Ask for `dtype="fp32"` where that matters.
* packed linears (eager bf16 on a CPU that computes bf16 natively): each linear layer keeps a copy of its weight in
  the blocked layout oneDNN's matrix product reads, instead of oneDNN reordering it at every call; bit-identical.
* channels_last weights and inputs: oneDNN's (CPU) and cuDNN's fastest convolutions work in that layout.
* batch-norm folding: every batch norm that directly follows a convolution (frozen ones and `nn.BatchNorm2d` in eval
  mode) is folded into the convolution's weight and bias, which removes a full pass over each feature map.
* compile (opt-in): `torch.compile` with dynamic shapes. Compiling costs about a minute per process and input shape on
  a CPU, so it pays only in long-running processes that see the same shapes many times (evaluation, a server), not in
  a one-shot command line run. An exported artefact (`python -m hub.export`) gives the compiled speed without that
  minute; when one next to the weights matches the machine it is used instead of compiling. Inductor's freezing
  (weights as constants, stored in oneDNN's layouts) is not used: in torch 2.13 it fails to lower the model once a
  second image size makes the shapes symbolic.

Exported artefacts (written by `python -m hub.export`, loaded here): an AOTInductor package `epng_inference.pt2` or
an ONNX model `epng_inference.onnx` next to the weights, with a manifest `epng_inference.json` recording its format
and what it was built for. An AOTInductor package is compiled code: its manifest records the torch version, device,
CPU capability and flags (or GPU compute capability), dtype and SHA-256 of the weights, and it is used only when all
of them match this machine and the weights (`dtype="auto"` takes the artefact's dtype); it reads the weights of the
model prepared here, laid out as at its export (`aoti_package.py`). An ONNX model is fp32 and
runs in an onnxruntime CPU session (as many intra-op threads as torch uses when it is loaded) on any CPU: it needs
onnxruntime (`pip install 'epng[onnx]'`), at least the version it was exported with, the same weights, and
`dtype="fp32"`, or `"auto"` on a CPU without native bf16 (on one with it, the bf16 eager fast path is faster). When
an artefact does not match, one log line says why not, and the eager fast path runs.
An int8 AOTInductor package (`python -m hub.export --dtype int8`) holds its own int8 weights, so it is loaded without
the model's; `dtype="auto"` takes it like any other package, `dtype="int8"` requires it, and the calls it does not
cover run eagerly in the dtype its floating-point part runs in (bf16 where native, as `"auto"` picks). Its
probabilities differ from fp32 by tenths at mask boundaries (its export checks the masks' IoU instead), so it runs
only where someone exported it.
An artefact exported with `--fixed_shapes` (batch 1, the processor's image size, a number of phrase slots) takes
calls of that image size and up to that many phrases, padded (`fixed_shape_program.py`); the others run eagerly.
Both manifests also record the weights' sizes and modification times: while those match, the weights are not hashed
again (most of a second for the paper's model on every load).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from .fixed_shape_program import FixedShapeProgram
from .packed_linear import pack_linear_weights

logger = logging.get_logger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ARTIFACT_FILES = {"aoti": "epng_inference.pt2", "onnx": "epng_inference.onnx"}
MANIFEST_FILE = "epng_inference.json"
# The exported program's inputs (with their dtypes) and outputs, in order.
ARTIFACT_INPUTS = {
    "pixel_values": torch.float32,
    "input_ids": torch.long,
    "attention_mask": torch.long,
    "phrase_ids": torch.long,
    "phrase_mask": torch.bool,
}
ARTIFACT_OUTPUTS = ("mask_logits", "phrase_embeddings")
# What artefacts exported before the manifest recorded its outputs return.
LEGACY_ARTIFACT_OUTPUTS = ("mask_logits", "phrase_embeddings", "pixel_embeddings")
# torch.backends.cpu.get_cpu_capability() values under which torch's CPU kernels use AVX-512 instructions.
AVX512_CAPABILITIES = ("AVX512", "AVX512_BF16", "AVX512_VNNI", "AMX")


@dataclass
class EpngInferenceSettings:
    """What `optimize_for_inference` applied to a model (kept as `model.inference_settings`).

    Args:
        dtype: `"bf16"` (autocast, linear and convolution weights stored in bf16), `"fp32"` or `"int8"` (the forward
            runs an int8 artefact; the calls it does not cover run eagerly in the dtype of its floating-point part,
            bf16 where native).
        dtype_reason: why that dtype was picked.
        channels_last: weights (and inputs) in channels_last memory format.
        folded_batch_norms: number of batch norms folded into their convolutions.
        compiled: the forward runs through `torch.compile`.
        artifact: path of the exported artefact the forward runs, or None.
        packed_linears: number of linear layers computing with their bf16 weights kept in oneDNN's layout (eager
            bf16 on a CPU that computes bf16 natively; see `packed_linear.py`).
    """

    dtype: str
    dtype_reason: str
    channels_last: bool
    folded_batch_norms: int
    compiled: bool
    artifact: str | None = None
    packed_linears: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# The /proc/cpuinfo flags that name instruction-set extensions: Inductor compiles for the host's (-march=native), so a
# compiled artefact needs all of those it was built with; the other flags (hypervisor, tsc, ...) do not matter.
ISA_FLAG = re.compile(r"^(avx|amx|sse|ssse|fma|f16c|bmi|gfni|vaes|vpclmul|pclmul|sha|aes|popcnt|movbe|adx|abm|xop)")


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        match = re.search(r"^flags\s*:\s*(.*)$", cpuinfo.read(), re.MULTILINE)
        return set(match.group(1).split()) if match else set()
    return set()


def native_bf16_reason(device: torch.device | str) -> tuple[bool, str]:
    """Whether `device` computes bf16 matrix products natively, and why (or why not)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = (major, minor) >= (8, 0)
        return native, f"CUDA compute capability {major}.{minor} ({'>=' if native else '<'} 8.0)"
    if device.type != "cpu":
        return False, f"no bf16 rule for device type {device.type!r}"
    capability = torch.backends.cpu.get_cpu_capability()
    bf16_flags = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if capability not in AVX512_CAPABILITIES:
        return False, f"torch runs {capability} kernels on this CPU (bf16 needs AVX-512 with avx512_bf16 or AMX)"
    if not bf16_flags:
        return False, f"CPU with {capability} but without avx512_bf16 or amx_bf16 (bf16 would be emulated)"
    return True, f"CPU with {capability} and {' + '.join(bf16_flags)}"


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> tuple[str, str]:
    """`"auto"`, `"bf16"`, `"fp32"` (or the torch dtype), `"int8"` -> (`"bf16"`, `"fp32"` or `"int8"`, reason)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    dtype = names.get(dtype, dtype)
    if dtype in DTYPES or dtype == "int8":
        return dtype, "asked for"
    if dtype != "auto":
        raise ValueError(f"dtype must be 'auto', 'bf16', 'fp32' or 'int8', got {dtype!r}")
    native, reason = native_bf16_reason(device)
    return ("bf16" if native else "fp32"), reason


def _conv_batch_norm_pairs(module: nn.Module):
    """(parent, batch-norm attribute name, conv) for every convolution directly followed by a batch norm: the
    `convolution` + `normalization` pair of transformers' conv layers (ResNet, RegNet, ...) and consecutive entries
    of an `nn.Sequential`."""
    from .visual_encoder import EpngFrozenBatchNorm2d

    norms = (EpngFrozenBatchNorm2d, nn.BatchNorm2d)
    for parent in module.modules():
        convolution, normalization = getattr(parent, "convolution", None), getattr(parent, "normalization", None)
        if isinstance(convolution, nn.Conv2d) and isinstance(normalization, norms):
            yield parent, "normalization", convolution
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            for (_, first), (name, second) in zip(children, children[1:], strict=False):
                if isinstance(first, nn.Conv2d) and isinstance(second, norms):
                    yield parent, name, first


@torch.no_grad()
def fold_batch_norms_into_convolutions(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it (in place); returns how many were folded.

    y = (conv(x) - mean) * weight / sqrt(var + eps) + bias becomes conv'(x) with the convolution's output channels
    scaled by weight / sqrt(var + eps) and a bias of bias - mean * scale (+ the scaled old bias). `nn.BatchNorm2d`
    layers must be in eval mode (their running statistics are what gets folded).
    """
    pairs = list(_conv_batch_norm_pairs(module))
    for parent, name, convolution in pairs:
        norm = getattr(parent, name)
        if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
            raise ValueError(f"cannot fold {type(norm).__name__} {name!r}: it is in training mode or has no statistics")
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        if convolution.bias is not None:
            shift = shift + convolution.bias * scale
        convolution.weight.mul_(scale.reshape(-1, 1, 1, 1).to(convolution.weight.dtype))
        convolution.bias = nn.Parameter(shift.to(convolution.weight.dtype), requires_grad=False)
        setattr(parent, name, nn.Identity())
    return len(pairs)


@torch.no_grad()
def store_weights_in(module: nn.Module, dtype: torch.dtype) -> None:
    """Store the weights and biases of every `nn.Linear` and `nn.Conv2d` in `dtype` (in place).

    Autocast casts them to its dtype at every call (it keeps the cast only of weights that require a gradient): for
    the paper's model 512 casts and 88 ms of a 2.1 s bf16 forward on a CPU. Stored in that dtype they are cast once,
    and autocast computes exactly what it computed before. Embeddings and norms keep their fp32 weights, as autocast
    runs them in fp32.
    """
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear | nn.Conv2d):
            for parameter in submodule.parameters(recurse=False):
                parameter.data = parameter.data.to(dtype)


def _autocast_forward(forward, device_type: str, dtype: torch.dtype, channels_last: bool, **defaults):
    """`forward` under autocast to `dtype`, with pixel values in channels_last, floating outputs back in fp32, and
    `defaults` for the keyword arguments the caller does not pass."""

    @functools.wraps(forward)
    def fast_forward(*args, **kwargs):
        kwargs = {**defaults, **kwargs}
        if channels_last and kwargs.get("pixel_values") is not None:
            kwargs["pixel_values"] = kwargs["pixel_values"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            output = forward(*args, **kwargs)
        if dtype == torch.float32:
            return output
        for key, value in output.items() if hasattr(output, "items") else ():
            if torch.is_tensor(value) and value.is_floating_point():
                output[key] = value.float()
        return output

    return fast_forward


def optimize_for_inference(
    model,
    dtype: str | torch.dtype = "auto",
    compile: bool = False,
    channels_last: bool = True,
    fold_batch_norms: bool = True,
    use_artifact: bool = True,
):
    """Prepare an `EpngForPanopticNarrativeGrounding` for inference, in place; see the module docstring.

    Args:
        dtype: `"auto"` (bf16 where computed natively, fp32 elsewhere), `"bf16"`, `"fp32"` or `"int8"` (an int8
            artefact exported by `python -m hub.export --dtype int8`, which must be usable here).
        compile: `torch.compile` the forward (dynamic shapes). Off by default: on a CPU it costs about a minute per
            process and input shape; it pays in long-running processes only.
        channels_last: convolution weights and pixel values in channels_last memory format.
        fold_batch_norms: fold the batch norms that follow convolutions into them.
        use_artifact: run the artefact exported next to the weights (`python -m hub.export`) when it matches this
            machine, the weights and the dtype (then nothing is compiled); with `dtype="auto"` the artefact's own
            dtype (the one its export picked) is taken. Calls it does not cover (losses, cached phrase features,
            attentions) run the eager fast path.

    Returns:
        The model, in eval mode without gradients, with `model.inference_settings` ([`EpngInferenceSettings`]).
        It is meant for inference only: its folded weights no longer have the batch-norm entries of the checkpoint,
        so save the original model, not this one.
    """
    if getattr(model, "inference_settings", None) is not None:
        logger.info("The model is already prepared for inference; it is returned unchanged.")
        return model
    device = model.device
    dtype_name, reason = resolve_dtype(dtype, device)
    model.eval().requires_grad_(False)
    folded = fold_batch_norms_into_convolutions(model) if fold_batch_norms else 0
    if channels_last:
        model.to(memory_format=torch.channels_last)
    artifact, manifest = (None, {})
    if use_artifact:
        artifact, manifest = usable_artifact(model, None if dtype == "auto" else dtype_name)
    if dtype_name == "int8" and artifact is None:
        why = find_artifact(model, "int8")[1] if use_artifact else "use_artifact=False"
        raise ValueError(
            "dtype='int8' runs an int8 artefact exported next to the weights (python -m hub.export --dtype int8 "
            f"--calibration_dataset DIR), and none can run here: {why}"
        )
    if artifact is not None and manifest["dtype"] != dtype_name:
        reason = f"the exported artefact's dtype (without it: {dtype_name}, {reason})"
        dtype_name = manifest["dtype"]
    # What the artefact does not cover runs eagerly; next to an int8 artefact, in the dtype of the artefact's own
    # floating-point part (bf16 where the CPU computes it natively; the package runs only on the CPU flags it was
    # exported on).
    eager_dtype = DTYPES[manifest.get("int8_float_dtype", "fp32") if dtype_name == "int8" else dtype_name]
    if eager_dtype != torch.float32:
        store_weights_in(model, eager_dtype)
    package, outputs = load_artifact(model, artifact, manifest) if artifact is not None else (None, None)
    artifact = str(artifact) if package is not None else None
    model.forward = _autocast_forward(
        model.forward, device.type, eager_dtype, channels_last, output_pixel_embeddings=False
    )
    # The same autocast around the text encoder run on its own, so that its token features passed back to the
    # forward give what the forward alone computes.
    model.get_token_features = _autocast_forward(model.get_token_features, device.type, eager_dtype, False)
    if package is not None:
        model.forward = _artifact_forward(model, package, outputs, model.forward)
    compile = compile and artifact is None
    packed = 0
    if compile:
        model.compile()
    elif device.type == "cpu" and artifact is None and dtype_name == "bf16" and native_bf16_reason(device)[0]:
        packed = pack_linear_weights(model)
    model.inference_settings = EpngInferenceSettings(
        dtype_name, reason, channels_last, folded, compile, artifact, packed
    )
    logger.info(f"EPNG inference settings: {model.inference_settings.to_dict()}")
    return model


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 over the `*.safetensors` files of a model folder (sorted by name), which an artefact embeds."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as weights:
            for block in iter(functools.partial(weights.read, 1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_stats(model_dir: str | Path) -> dict:
    """Name -> [size in bytes, modification time in ns] of the `*.safetensors` files of a model folder. The manifest
    records them beside the hash, so that a load finds unchanged weights by one `stat` per file instead of hashing
    hundreds of MB (most of a second for the paper's model); any rewrite, copy without times or download changes
    them, and then the hash is computed and compared."""
    stats = {path.name: path.stat() for path in sorted(Path(model_dir).glob("*.safetensors"))}
    return {name: [stat.st_size, stat.st_mtime_ns] for name, stat in stats.items()}


def machine_fingerprint(device: torch.device | str) -> dict:
    """What a compiled artefact depends on: torch version, device, and the CPU's capability and feature flags
    (Inductor compiles for the host's instruction set) or the GPU's compute capability."""
    device = torch.device(device)
    fingerprint = {"torch_version": torch.__version__, "device": device.type}
    if device.type == "cuda":
        fingerprint["cuda_capability"] = list(torch.cuda.get_device_capability(device))
    else:
        fingerprint["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        fingerprint["cpu_flags"] = sorted(flag for flag in cpu_flags() if ISA_FLAG.match(flag))
    return fingerprint


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version (without importing it), or None."""
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def artifact_mismatch(manifest: dict, fingerprint: dict, dtype: str | None, weights: str | None) -> str | None:
    """Why an artefact with this manifest cannot serve here, or None when it can (`dtype` None: `"auto"`, which takes
    an AOTInductor package in any dtype)."""
    artifact_format = manifest.get("format", "aoti")
    if artifact_format not in ARTIFACT_FILES:
        return f"unknown artefact format {artifact_format!r}"
    if artifact_format == "onnx":
        reason = onnx_mismatch(manifest, fingerprint, dtype)
        if reason:
            return reason
    else:
        for key in ("torch_version", "device", "cpu_capability", "cuda_capability"):
            if manifest.get(key) != fingerprint.get(key):
                return f"built for {key}={manifest.get(key)!r}, this machine has {fingerprint.get(key)!r}"
        missing = sorted(set(manifest.get("cpu_flags", [])) - set(fingerprint.get("cpu_flags", [])))
        if missing:
            return f"built on a CPU with flags this one lacks: {', '.join(missing[:8])}"
    if dtype is not None and manifest.get("dtype") != dtype:
        return f"built for dtype {manifest.get('dtype')!r}, {dtype!r} is asked for here"
    if weights is not None and manifest.get("weights_sha256") != weights:  # None: the weights' stats match
        return "the weights next to it changed since it was exported"
    return None


def onnx_mismatch(manifest: dict, fingerprint: dict, dtype: str | None) -> str | None:
    """Why an ONNX artefact cannot run here (it runs on any CPU with a recent enough onnxruntime), or None.

    With `dtype` None (`"auto"`), it is not taken on a CPU that computes bf16 natively: there the eager bf16 fast path
    is faster than the fp32 model in onnxruntime (see the README's Performance section)."""
    from packaging.version import Version

    if fingerprint.get("device") != "cpu":
        return f"an ONNX artefact runs on the CPU, the model is on {fingerprint.get('device')!r}"
    installed, exported_with = onnxruntime_version(), manifest.get("onnxruntime_version", "0")
    if installed is None:
        return "it is an ONNX model and onnxruntime is not installed (pip install 'epng[onnx]')"
    if Version(installed) < Version(exported_with):
        return f"exported with onnxruntime {exported_with}, this one has the older {installed}"
    if dtype is None:
        native_bf16, reason = native_bf16_reason("cpu")
        if native_bf16:
            return f"it is fp32 and dtype='auto' runs the faster bf16 fast path here ({reason}); dtype='fp32' runs it"
    return None


def read_manifest(model_dir: str | Path) -> dict:
    """The manifest of the artefact exported into `model_dir` (an empty one where there is none or it is
    unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads(Path(model_dir, MANIFEST_FILE).read_text())
    return {}


def artifact_dtype(model_dir: str | Path) -> str:
    """The dtype of the artefact exported into `model_dir` (`"auto"` where there is none): what to ask
    `optimize_for_inference` for to run that artefact whatever `"auto"` would pick."""
    return read_manifest(model_dir).get("dtype", "auto")


def artifact_files(manifest: dict) -> list[str]:
    """The files of the artefact a manifest describes, in the model's folder: the one loaded first, then those it
    reads (an ONNX model's weights are in `<file>.data`)."""
    return [manifest.get("file", ARTIFACT_FILES["aoti"]), *manifest.get("data_files", [])]


def find_artifact(model, dtype: str | None) -> tuple[Path | None, str]:
    """The artefact next to the model's weights that matches this machine (and `dtype`, unless None), or None and
    why not.

    The model's folder is `model.name_or_path` (set by `from_pretrained` from a local folder)."""
    artifact, reason, _ = _match_artifact(model, dtype)
    return artifact, reason


def _match_artifact(model, dtype: str | None) -> tuple[Path | None, str, dict]:
    """`find_artifact`, with the manifest it read (empty where there was none)."""
    model_dir = Path(str(getattr(model, "name_or_path", "") or ""))
    manifest_path = model_dir / MANIFEST_FILE
    if not str(model_dir) or not manifest_path.is_file():
        return None, "no exported artefact next to the weights", {}
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as error:
        return None, f"unreadable {manifest_path}: {error}", {}
    missing = [name for name in artifact_files(manifest) if not (model_dir / name).is_file()]
    if missing:
        return None, f"{manifest_path} names {', '.join(missing)}, missing next to it", manifest
    artifact = model_dir / artifact_files(manifest)[0]
    unchanged = manifest.get("weights_stats") == weights_stats(model_dir)
    weights = None if unchanged else weights_sha256(model_dir)
    reason = artifact_mismatch(manifest, machine_fingerprint(model.device), dtype, weights)
    return (None, reason, manifest) if reason else (artifact, "matches this machine", manifest)


class OnnxRuntimeProgram:
    """An ONNX artefact in an onnxruntime CPU session, called like an AOTInductor package: the `ARTIFACT_INPUTS` as
    keyword tensors in, the `ARTIFACT_OUTPUTS` as a tuple of tensors out.

    Args:
        path: the `.onnx` file.
        num_threads: intra-op threads of the session (default: torch's thread count now).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None, output_names=ARTIFACT_OUTPUTS):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("running an ONNX artefact needs onnxruntime: pip install 'epng[onnx]'") from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # The exporter drops inputs the graph does not read; feeding them would be an error.
        self.input_names = [graph_input.name for graph_input in self.session.get_inputs()]
        self.output_names = list(output_names)

    def __call__(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {name: inputs[name].detach().cpu().contiguous().numpy() for name in self.input_names}
        return tuple(torch.from_numpy(output) for output in self.session.run(self.output_names, feeds))


def _artifact_forward(model, package, output_names: tuple[str, ...], eager_forward):
    """A forward that runs the exported `package` (which returns the `output_names` outputs) for plain inference calls
    (pixel values + tokens + phrase ids and mask) and `eager_forward` for everything else (losses, cached phrase or
    token features, attentions, pixel embeddings, tuples)."""
    from .modeling_epng import EpngOutput

    signature = inspect.signature(eager_forward)
    fixed_shapes = isinstance(package, FixedShapeProgram)

    @functools.wraps(eager_forward)
    def artifact_forward(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        covered = all(arguments.get(name) is not None for name in ("input_ids", "phrase_ids", "phrase_mask"))
        covered &= all(arguments.get(name) is None for name in ("mask_labels", "phrase_features", "token_features"))
        covered &= not arguments.get("output_attentions") and arguments.get("return_dict") is not False
        covered &= not arguments.get("output_pixel_embeddings")
        if not covered:
            return eager_forward(*args, **kwargs)
        if arguments.get("attention_mask") is None:
            arguments["attention_mask"] = torch.ones_like(arguments["input_ids"])
        inputs = {name: arguments[name].to(model.device, dtype) for name, dtype in ARTIFACT_INPUTS.items()}
        model._check_inputs(**inputs, phrase_features=None, mask_labels=None)
        refusal = package.refusal(inputs["pixel_values"], inputs["phrase_mask"]) if fixed_shapes else None
        if refusal is not None:
            logger.warning_once(f"EPNG: the exported artefact does not take a call ({refusal}); running it eagerly.")
            return eager_forward(*args, **kwargs)
        outputs = dict(zip(output_names, package(**inputs), strict=True))
        return EpngOutput(**{name: outputs[name] for name in ARTIFACT_OUTPUTS})

    return artifact_forward


def usable_artifact(model, dtype: str | None) -> tuple[Path | None, dict]:
    """The path and manifest of the exported artefact that can serve `model` here (see `find_artifact`), or None and
    an empty manifest; logs one line when an artefact exists but cannot be used."""
    artifact, reason, manifest = _match_artifact(model, dtype)
    if artifact is None:
        if reason.startswith("no exported artefact"):
            logger.info(f"EPNG: {reason}; running the eager fast path.")
        else:
            logger.warning(f"EPNG: not using the exported artefact next to the weights ({reason}); running eager.")
        return None, {}
    return artifact, manifest


def load_artifact(model, artifact: Path, manifest: dict):
    """The artefact at `artifact` loaded for the prepared `model`, as (package, names of the outputs it returns), or
    two Nones (logged) when the model's weights are not laid out as the package reads them."""
    outputs = tuple(manifest.get("outputs", LEGACY_ARTIFACT_OUTPUTS))
    if manifest.get("format") == "onnx":
        package = OnnxRuntimeProgram(artifact, output_names=outputs)
    else:
        from .aoti_package import hand_model_weights, load_aoti_package

        package = load_aoti_package(artifact)
        if not manifest.get("weights_in_package", True):  # the export left them out: the model's are handed over
            package, reason = hand_model_weights(package, model, manifest.get("weights_layout_sha256"))
            if package is None:
                logger.warning(f"EPNG: not using the exported artefact next to the weights ({reason}); running eager.")
                return None, None
    fixed_shapes = manifest.get("fixed_shapes")
    if fixed_shapes:
        package = FixedShapeProgram(package, fixed_shapes["image_size"], fixed_shapes["phrase_slots"])
    return package, outputs
