"""Linear layers whose bf16 weights are kept in oneDNN's blocked layout, for CPU inference.

On a CPU, a bf16 `F.linear` runs oneDNN's matrix product, which first reorders the (out, in) weight into the blocked
layout its kernel reads, at every call. `EpngPackedLinear` keeps that reordered copy and calls the same oneDNN
product with it: outputs are bit-identical, and the paper's model at 640 px gets 2-3 % faster on an AMD EPYC with
avx512_bf16 (one thread; 6-18 % per linear layer in isolation), the demo's model at 224 px 13 %. The price is a second
copy of the linear weights, 208 MiB for the paper's model (BERT-base included): the dense weight stays, as the state
dict, `torch.compile` and `torch.export` read it. The copy is made at the second call with a weight, and again
whenever the weight is changed in place or replaced, so the layer always computes with its current weight.
"""

from __future__ import annotations

import torch
from torch import nn


class EpngPackedLinear(nn.Linear):
    """An `nn.Linear` in bf16 on a CPU that computes with a copy of its weight in oneDNN's blocked layout.

    `pack_linear_weights` turns `nn.Linear` layers into this class in place; the weight and bias parameters (and so
    the state dict) are unchanged. Inputs of another dtype are cast to the weight's, as autocast casts them.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # also true while torch.export traces
            # A traced graph has no real weight to pack; Inductor lays out the weights of its own kernels.
            return super().forward(hidden_states)
        weight = self.weight
        key = (weight.data_ptr(), weight._version)
        if getattr(self, "_packed_key", None) != key:
            if getattr(self, "_seen_key", None) != key:
                # The first call with a weight computes as `nn.Linear` does, so that a process grounding one image
                # (the CLI) does not pay for a layout it never reuses: oneDNN's first product on a packed weight
                # costs more than the reorder itself (1.3-1.7 s more for the paper's model's first forward, AMD EPYC,
                # one thread).
                self._seen_key = key
                return super().forward(hidden_states.to(weight.dtype))
            self._packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            self._packed_key = key
        return torch.ops.mkldnn._linear_pointwise(
            hidden_states.to(weight.dtype), self._packed_weight, self.bias, "none", [], ""
        )


def pack_linear_weights(module: nn.Module) -> int:
    """Turn every `nn.Linear` of `module` whose weight is a bf16 CPU tensor into an `EpngPackedLinear` (in place);
    returns how many. Meant for inference without gradients: the packed copy does not carry them."""
    count = 0
    for submodule in module.modules():
        if type(submodule) is nn.Linear and submodule.weight.dtype == torch.bfloat16 and submodule.weight.is_cpu:
            submodule.__class__ = EpngPackedLinear
            count += 1
    return count
