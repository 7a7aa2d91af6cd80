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
"""The visual encoder of EPNG: a transformers backbone (C3, C4, C5), an FPN (P3, P4, P5) and their fusion at stride 16,
plus the frozen batch norm and the stage lookup that the freezing policy uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.backbone_utils import load_backbone

from .configuration_epng import EpngConfig


class EpngFrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, same state-dict keys as BatchNorm2d)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return hidden_states * scale[None, :, None, None] + shift[None, :, None, None]


def freeze_batch_norms(module: nn.Module) -> None:
    """Replace every `nn.BatchNorm2d` below `module` by an `EpngFrozenBatchNorm2d` carrying its values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = EpngFrozenBatchNorm2d(child.num_features, child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norms(child)


def backbone_stages(backbone: nn.Module) -> nn.ModuleList:
    """The list of stages of a transformers backbone: `encoder.stages` (ResNet, ConvNeXt) or `encoder.layers`
    (Swin, where the encoder sits one level down, in `backbone.swin`)."""
    encoders = [getattr(module, "encoder", None) for module in (backbone, *backbone.children())]
    for encoder in filter(None, encoders):
        for name in ("stages", "layers"):
            if isinstance(getattr(encoder, name, None), nn.ModuleList):
                return getattr(encoder, name)
    raise ValueError(
        f"Cannot find the stages of backbone {type(backbone).__name__} to apply backbone_trainable_stages; "
        "set EpngConfig.backbone_trainable_stages=-1 (train all) for this backbone"
    )


class EpngVisualEncoder(nn.Module):
    """Backbone + FPN over C3..C5 + fusion of P3, P4, P5 at stride 16.

    The reference builds its FPN over C2..C5, but P2 never reaches the output, so the C2 branch is left out: the
    outputs are identical and no parameter goes without a gradient (which multi-GPU DDP would reject).
    """

    def __init__(self, config: EpngConfig):
        super().__init__()
        self.align_corners = config.upsample_align_corners
        self.backbone = load_backbone(config)
        if config.freeze_backbone_batch_norm:
            freeze_batch_norms(self.backbone)
        in_channels = self.backbone.channels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(channels, config.fpn_channels, 1) for channels in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(config.fpn_channels, config.fpn_channels, 3, padding=1) for _ in in_channels
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> fused pixel map (B, 3 * fpn_channels, H/16, W/16)."""
        c3, c4, c5 = self.backbone(pixel_values).feature_maps
        inner_c5 = self.lateral_convs[2](c5)
        inner_c4 = self.lateral_convs[1](c4) + F.interpolate(inner_c5, size=c4.shape[-2:], mode="nearest")
        inner_c3 = self.lateral_convs[0](c3) + F.interpolate(inner_c4, size=c3.shape[-2:], mode="nearest")
        p3, p4, p5 = (
            conv(inner) for conv, inner in zip(self.output_convs, (inner_c3, inner_c4, inner_c5), strict=True)
        )
        fused_size = p4.shape[-2:]
        # Inputs are multiples of 32, so P3 is exactly twice P4 and 2x2 average pooling is the reference's adaptive
        # pooling; unlike adaptive pooling, Inductor can compile it for symbolic sizes (a compiled model meeting a
        # second image size).
        p3 = F.avg_pool2d(p3, kernel_size=2)
        p5 = F.interpolate(p5, size=fused_size, mode="bilinear", align_corners=self.align_corners)
        return torch.cat([p3, p4, p5], dim=1)
