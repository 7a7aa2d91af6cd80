"""EPNG for Panoptic Narrative Grounding: public API and Auto-class registration."""

from transformers import AutoConfig, AutoModel

from .configuration_epng import EpngConfig
from .modeling_epng import EpngForPanopticNarrativeGrounding, EpngOutput, EpngPreTrainedModel

AutoConfig.register(EpngConfig.model_type, EpngConfig, exist_ok=True)
AutoModel.register(EpngConfig, EpngForPanopticNarrativeGrounding, exist_ok=True)

__all__ = ["EpngConfig", "EpngForPanopticNarrativeGrounding", "EpngOutput", "EpngPreTrainedModel"]
