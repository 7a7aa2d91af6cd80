# Copyright 2026 The EPNG Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Loading an AOTInductor package (`epng_inference.pt2`) in well under a second.

Two things make `torch._inductor.aoti_load_package` slow to start:

* its device check compiles (on a cold Inductor cache) and loads, in a child Python per instruction set, a probe
  library, only to warn when the package was built for another CPU: 1.4 s per process on a warm cache. The manifest
  next to the package has already matched the torch version, CPU capability and flags, so `load_aoti_package` opens
  the package with torch's loader directly.
* a package holding its weights is as large as them (717 MB for the paper's model), and every load unpacks it. The
  export compiles it without them (`package_constants_in_so=False`): a load hands it the tensors of the model
  `optimize_for_inference` has just prepared (folded batch norms, channels_last convolutions), which it reads in
  place. The manifest records a hash of their names, dtypes, shapes and strides: a model prepared differently is not
  handed over, and the eager fast path runs.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import torch

# The exported program holds the model as its attribute `model` (`hub/export.py`), so the package reads each weight
# under the name "model.<parameter or buffer name>".
PROGRAM_PREFIX = "model."


def load_aoti_package(path: str | Path):
    """The AOTInductor package at `path`, loaded without torch's device check (see the module docstring)."""
    from torch.export.pt2_archive._package import AOTICompiledModel

    # Arguments: model name in the package, run_single_threaded, num_runners, device_index (-1: the current device).
    return AOTICompiledModel(torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1))


def model_weights_for(package, model) -> dict[str, torch.Tensor]:
    """The tensors of `model` that `package` (compiled without its weights) reads, under the names it reads them by.

    Raises:
        KeyError: naming the first weight of the package the model does not have.
    """
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    available = {PROGRAM_PREFIX + name: tensor for name, tensor in tensors}
    return {name: available[name] for name in package.get_constant_fqns()}


def weights_layout_sha256(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each weight's name, dtype, shape and strides: what the compiled code takes for granted."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name]
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)} {tensor.stride()}\n".encode())
    return digest.hexdigest()


class AotiPackageWithWeights:
    """A package compiled without its weights, handed a model's tensors. The package keeps pointers to them, not
    copies (`user_managed`), so this object keeps them alive as long as it lives, even if the model drops them."""

    def __init__(self, package, weights: dict[str, torch.Tensor]):
        package.load_constants(weights, check_full_update=True, user_managed=True)
        self.package, self.weights = package, weights

    def __call__(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.package(**inputs)


def hand_model_weights(package, model, layout_sha256: str) -> tuple[AotiPackageWithWeights | None, str | None]:
    """`package` with the weights of `model`, if their layout is the one it was compiled for (`layout_sha256`, from
    the manifest); else None and why not."""
    try:
        weights = model_weights_for(package, model)
    except KeyError as error:
        return None, f"the prepared model has no weight {error.args[0]!r}, which the package reads"
    if weights_layout_sha256(weights) != layout_sha256:
        return None, "the prepared model's weights are laid out unlike the exported ones (other inference options?)"
    return AotiPackageWithWeights(package, weights), None
