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
"""`pipeline("panoptic-narrative-grounding")`: any image + any narrative → one mask per noun phrase.

```python
import modeling_epng  # registers the task
from transformers import pipeline

grounder = pipeline("panoptic-narrative-grounding", model="outputs/demo/model")
for phrase in grounder("photo.jpg", "a woman holding an umbrella next to a red car"):
    print(phrase["phrase"], phrase["score"], phrase["mask"].size)
```

A folder pushed with `python -m hub push-model` (or prepared by `python -m hub.remote_code`) carries this file and a
`custom_pipelines` entry in its `config.json`, so `pipeline(model=repo_id, trust_remote_code=True)` builds it without
this package.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image

from .background_parsing import background_phrase_parser
from .phrase_extraction import cached_phrase_spans
from .phrase_spans import resolve_phrase_spans

TASK = "panoptic-narrative-grounding"


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _is_image(value: Any) -> bool:
    return isinstance(value, (str, Image.Image, np.ndarray, torch.Tensor))


class EpngPanopticNarrativeGroundingPipeline(Pipeline):
    r"""
    Grounds every noun phrase of a narrative to a binary mask of its image with an EPNG model and its
    [`EpngProcessor`].

    Call it with:

    - `grounder(image, narrative)`: the phrases are found automatically (spaCy, see `extract_phrase_spans`);
    - `grounder(image, narrative, phrases=["a woman", (30, 41)])`: the given phrases, as strings (matched left to
      right) or `(char_start, char_end)` spans;
    - `grounder([(image, narrative), ...], batch_size=8)`, `grounder([image, ...], [narrative, ...])` or a list of
      `{"image", "narrative", "phrases"}` dicts: one result per pair; a list given as `phrases` holds one phrase list
      per pair.

    An image is a local path, an http(s) URL, a PIL image or an `(H, W, 3)` array.

    Parameters at construction:
        optimize (`bool`, *optional*, defaults to `True`): prepare the model with `model.optimize_for_inference()`
            (bf16 autocast where the hardware computes bf16 natively, channels_last, batch norms folded into the
            convolutions), in place. `False` runs the model as given.

    Parameters (at construction or per call):
        threshold (`float`, *optional*): probability threshold of the masks; defaults to the model config's
            `mask_threshold`.
        spacy_model (`str`, *optional*): the installed spaCy English pipeline of the automatic phrases.
        max_length (`int`, *optional*, defaults to 300): narratives are truncated to this many tokens.
        timeout (`float`, *optional*): seconds to wait for an image URL.
        parse_in_background (`bool`, *optional*): parse a new narrative's automatic phrases in a child process (one
            per spaCy pipeline, shared by the pipelines of this process) while the text encoder runs here, which hides
            the parse's few milliseconds on a second core; the masks are the same. It applies to calls of batch size
            1 without data-loader workers, and to an eager model (not an exported artefact or a compiled forward,
            which take the phrases as inputs). Defaults to `True` where that applies and this process may use two or
            more cores. The child loads spaCy meanwhile: until it is ready, narratives are parsed here.

    Returns:
        Per narrative, a list with one dict per phrase: `phrase` (`str`, `narrative[start:end]`), `start`, `end`
        (character offsets), `score` (mean mask probability inside the mask, 0 for an empty mask) and `mask` (PIL image
        of mode `"L"` at the original image size, 255 inside the mask). A phrase that truncation to `max_length`
        leaves without tokens is left out (the processor warns).
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, optimize: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if optimize and hasattr(self.model, "optimize_for_inference"):
            self.model.optimize_for_inference()

    def get_inference_context(self):
        return torch.inference_mode

    def forward(self, model_inputs, **forward_params):
        if self.device.type != "cpu":
            return super().forward(model_inputs, **forward_params)
        # On the CPU, `Pipeline.forward`'s moves of the inputs and outputs to the devices move nothing, but their walk
        # through every span of every narrative cost 0.06-0.17 ms a call at the demo model's size.
        with self.get_inference_context()():
            return self._forward(model_inputs, **forward_params)

    def _sanitize_parameters(
        self, threshold=None, spacy_model=None, max_length=None, timeout=None, parse_in_background=None, **kwargs
    ):
        if kwargs:
            raise TypeError(f"Unknown arguments of the {TASK} pipeline: {sorted(kwargs)}")
        preprocess_params, postprocess_params = {}, {}
        if parse_in_background is not None:
            preprocess_params["parse_in_background"] = bool(parse_in_background)
        if spacy_model is not None:
            preprocess_params["spacy_model"] = spacy_model
        if max_length is not None:
            preprocess_params["max_length"] = max_length
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        if threshold is not None:
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"`threshold` must be in (0, 1), got {threshold}")
            postprocess_params["threshold"] = threshold
        return preprocess_params, {}, postprocess_params

    def __call__(self, images, narratives=None, phrases="auto", **kwargs):
        """Ground one `(image, narrative)` pair or a list of them (see the class docstring)."""
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        num_workers = kwargs.get("num_workers") or self._num_workers or 0
        if batch_size > 1 or num_workers > 0 or not self._runs_eager():
            # A batch is collated before its forward, data-loader workers cannot share the child, and an artefact or
            # a compiled forward takes the phrase ids as inputs: the phrases must be known first.
            kwargs["parse_in_background"] = False
        single = narratives is not None and isinstance(narratives, str)
        if single:
            return super().__call__({"image": images, "narrative": narratives, "phrases": phrases}, **kwargs)
        if narratives is not None:
            if not isinstance(images, (list, tuple)) or len(images) != len(narratives):
                raise ValueError("Give as many images as narratives.")
            pairs = list(zip(images, narratives, strict=True))
        elif isinstance(images, dict):
            return super().__call__({"phrases": phrases, **images}, **kwargs)
        elif isinstance(images, (list, tuple)) and images:
            pairs = list(images)
        else:
            raise ValueError("Give an image and a narrative, or a list of (image, narrative) pairs.")
        if phrases != "auto" and (
            not isinstance(phrases, (list, tuple))
            or len(phrases) != len(pairs)
            or any(isinstance(pair_phrases, str) and pair_phrases != "auto" for pair_phrases in phrases)
        ):
            raise ValueError("With a list of narratives, `phrases` holds one phrase list per narrative.")
        inputs = []
        for index, pair in enumerate(pairs):
            pair_phrases = phrases if phrases == "auto" else phrases[index]
            if isinstance(pair, dict):
                inputs.append({"phrases": pair_phrases, **pair})
            elif isinstance(pair, (list, tuple)) and len(pair) == 2 and _is_image(pair[0]):
                inputs.append({"image": pair[0], "narrative": pair[1], "phrases": pair_phrases})
            else:
                raise ValueError(f"Input {index} is not an (image, narrative) pair nor a dict: {type(pair).__name__}")
        return super().__call__(inputs, **kwargs)

    def _runs_eager(self) -> bool:
        """Whether the model's forward runs eagerly, so that it takes token features computed ahead."""
        settings = getattr(self.model, "inference_settings", None)
        return settings is None or (settings.artifact is None and not settings.compiled)

    def preprocess(
        self, inputs: dict, spacy_model=None, max_length=300, timeout=None, parse_in_background=None
    ) -> dict:
        narrative = inputs.get("narrative")
        if not isinstance(narrative, str) or not narrative.strip():
            raise ValueError(f"The narrative must be a non-empty string, got {narrative!r}")
        phrases = inputs.get("phrases", "auto")
        image = inputs.get("image")
        if image is None:
            raise ValueError("Give an image with the narrative (a path, an http(s) URL, a PIL image or an array).")
        pending = None
        if isinstance(phrases, str) and phrases == "auto" and cached_phrase_spans(narrative, spacy_model) is None:
            if parse_in_background is None:
                parse_in_background = _usable_cores() > 1
            parser = background_phrase_parser(spacy_model) if parse_in_background else None
            if parser is not None and parser.ready:
                # The narrative is tokenised now, for the text encoder to start, and goes to the child with its
                # tokens' offsets: the child parses it and maps the phrases onto these tokens meanwhile. The image is
                # processed in `_forward` after the text encoder, as a deferred call, which no device move touches.
                encoded = self.processor(text=narrative, max_length=max_length, return_offsets_mapping=True)
                offsets = encoded["offset_mapping"].numpy()  # stays on the CPU, where phrases map onto it
                pending = parser.submit(narrative, offsets[0].tolist())
        if isinstance(image, str):
            image = load_image(image, timeout=timeout)
        if pending is not None:
            return {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "narrative": narrative,
                "process_image": functools.partial(self.processor.image_processor, image, return_tensors="pt"),
                "pending_spans": pending,
                "offset_mapping": offsets,
                "max_length": max_length,
            }
        if not isinstance(phrases, str):
            phrases = resolve_phrase_spans(narrative, phrases)
        encoded = self.processor(
            images=image,
            text=narrative,
            phrases=phrases,
            max_length=max_length,
            return_original_sizes=True,
            spacy_model=spacy_model,
        )
        spans = encoded["phrase_spans"][0] if isinstance(phrases, str) else phrases
        return {
            "pixel_values": encoded["pixel_values"],
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "original_size": self._original_size(encoded),
            "narrative": narrative,
            **self._phrase_inputs(encoded),
            "spans": [tuple(span) for span in spans],
        }

    @staticmethod
    def _original_size(encoded) -> tuple[int, int]:
        return tuple(int(side) for side in encoded["original_sizes"][0])

    @staticmethod
    def _phrase_inputs(encoded) -> dict:
        """The processor's phrase ids and mask as the pipeline passes them on. Batching pads every tensor with zeros,
        so tokens carry phrase index + 1 here: 0 means "no phrase"."""
        return {"token_phrase_slots": encoded["phrase_ids"] + 1, "phrase_mask": encoded["phrase_mask"]}

    def _forward(self, model_inputs: dict) -> dict:
        token_features = None
        if "pending_spans" in model_inputs:  # the narrative is being parsed in the child process meanwhile
            token_features = self.model.get_token_features(model_inputs["input_ids"], model_inputs["attention_mask"])
            image_inputs = model_inputs["process_image"]()
            pending = model_inputs["pending_spans"]
            spans = pending.result()
            token_phrase_ids = pending.token_phrase_ids()
            if token_phrase_ids is None:  # the child did not map them: see `PendingPhraseSpans.token_phrase_ids`
                encoded = self.processor.phrase_inputs(
                    model_inputs["narrative"], spans, model_inputs["offset_mapping"], model_inputs["max_length"]
                )
                phrase_inputs = self._phrase_inputs(encoded)
            else:  # every phrase covers a token
                phrase_inputs = {
                    "token_phrase_slots": torch.tensor([token_phrase_ids]).add_(1),
                    "phrase_mask": torch.ones((1, len(spans)), dtype=torch.bool),
                }
            model_inputs = {
                **model_inputs,
                **{key: value.to(self.device) for key, value in phrase_inputs.items()},
                "pixel_values": image_inputs["pixel_values"].to(self.device),
                "original_size": self._original_size(image_inputs),
                "spans": [tuple(span) for span in spans],
            }
        phrase_mask = model_inputs["phrase_mask"]
        passthrough = {key: model_inputs[key] for key in ("original_size", "narrative", "spans")}
        if phrase_mask.shape[1] == 0:  # no phrase in any narrative of the batch
            pixel_values = model_inputs["pixel_values"]
            empty = pixel_values.new_zeros((pixel_values.shape[0], 0, *(side // 4 for side in pixel_values.shape[-2:])))
            return {"mask_logits": empty, "phrase_mask": phrase_mask, **passthrough}
        outputs = self.model(
            pixel_values=model_inputs["pixel_values"].to(self.model.dtype),
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
            phrase_ids=model_inputs["token_phrase_slots"] - 1,
            phrase_mask=phrase_mask,
            token_features=token_features,
        )
        return {"mask_logits": outputs.mask_logits, "phrase_mask": phrase_mask, **passthrough}

    def postprocess(self, model_outputs: dict, threshold: float | None = None) -> list[dict]:
        if threshold is None:
            threshold = self.model.config.mask_threshold
        narrative, spans = model_outputs["narrative"], model_outputs["spans"]
        kept = [bool(keep) for keep in model_outputs["phrase_mask"][0, : len(spans)].tolist()]
        logits = model_outputs["mask_logits"][0, : len(spans)]
        if not all(kept):  # phrases that truncation left without tokens
            logits = logits[torch.tensor(kept, dtype=torch.bool)]
        grounding = self.processor.post_process_image_grounding(logits, model_outputs["original_size"], threshold)
        kept_spans = [span for span, keep in zip(spans, kept, strict=True) if keep]
        masks = grounding["masks"].view(torch.uint8).mul_(255).cpu().numpy()  # 2-D uint8 slices: PIL mode "L"
        size = (masks.shape[2], masks.shape[1])
        scores = grounding["scores"].tolist()
        results = []
        for (start, end), mask, score in zip(kept_spans, masks, scores, strict=True):
            results.append(
                {
                    "phrase": narrative[start:end],
                    "start": start,
                    "end": end,
                    "score": score,
                    # What `Image.fromarray(mask)` gives (an image on the array's memory), less its reading of the
                    # array interface.
                    "mask": Image.frombuffer("L", size, mask, "raw", "L", 0, 1),
                }
            )
        return results


def register_pipeline() -> None:
    """Register the task with transformers' pipeline registry (done by `import modeling_epng`)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=EpngPanopticNarrativeGroundingPipeline, pt_model=AutoModel, type="multimodal"
    )


__all__ = ["TASK", "EpngPanopticNarrativeGroundingPipeline", "register_pipeline"]
