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
"""EPNG for Panoptic Narrative Grounding: public API and Auto-class registration."""

from transformers import AutoConfig, AutoModel

from .configuration_epng import EpngConfig
from .modeling_epng import EpngForPanopticNarrativeGrounding, EpngOutput, EpngPreTrainedModel

AutoConfig.register(EpngConfig.model_type, EpngConfig, exist_ok=True)
AutoModel.register(EpngConfig, EpngForPanopticNarrativeGrounding, exist_ok=True)

__all__ = ["EpngConfig", "EpngForPanopticNarrativeGrounding", "EpngOutput", "EpngPreTrainedModel"]

# Processing classes (registered here so that `import modeling_epng` is all AutoImageProcessor/AutoProcessor need).
from transformers import AutoImageProcessor, AutoProcessor  # noqa: E402

from modeling_epng.image_processing_epng import EpngImageProcessor  # noqa: E402
from modeling_epng.processing_epng import EpngProcessor  # noqa: E402

# One implementation (PyTorch, no torchvision needed) serves both backend names, so AutoImageProcessor resolves it
# without a backend-fallback warning whether or not torchvision is installed.
AutoImageProcessor.register(
    EpngConfig,
    image_processor_classes={"torchvision": EpngImageProcessor, "pil": EpngImageProcessor},
    exist_ok=True,
)
AutoProcessor.register(EpngConfig, EpngProcessor, exist_ok=True)

__all__ += ["EpngImageProcessor", "EpngProcessor"]

# The transformers pipeline task "panoptic-narrative-grounding".
from modeling_epng.pipeline_epng import EpngPanopticNarrativeGroundingPipeline, register_pipeline  # noqa: E402

register_pipeline()

__all__ += ["EpngPanopticNarrativeGroundingPipeline"]
