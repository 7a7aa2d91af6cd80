"""An exported EPNG program of one batch size, image size and phrase-slot count, called like one of dynamic shapes.

`python -m hub.export --fixed_shapes` exports the program for batch 1, the processor's image size (every image it
makes has that size) and a number of phrase slots, with only the token count left dynamic. Inductor then compiles
kernels for known sizes: on the AMD EPYC of the README, the int8 program of the paper's configuration ran 2.6x
faster than fp32 eager that way, and 1.6x with every size dynamic.

A call is padded to those shapes: each narrative of a batch runs on its own, its phrase slots padded with slots whose
`phrase_mask` is False (the pixels' cross attention masks them out, so they change no real phrase's mask), and the
outputs are cut back to the call's phrase count. Calls of another image size or of more phrases than there are slots
cannot run on the program; `refusal` says why, and the model runs those eagerly.
"""

from __future__ import annotations

import torch


class FixedShapeProgram:
    """An exported program (called with keyword tensors, returning a tuple of tensors whose dimension 1 is the phrase
    slot) of batch size 1, image size `image_size` and `phrase_slots` phrase slots, called with any batch size and
    up to `phrase_slots` phrases.

    Args:
        program: the compiled program (an AOTInductor package, an onnxruntime session wrapper, a module).
        image_size: `(height, width)` of the `pixel_values` it was exported for.
        phrase_slots: the phrase count of its `phrase_mask`.
    """

    def __init__(self, program, image_size: tuple[int, int], phrase_slots: int):
        self.program = program
        self.image_size = tuple(image_size)
        self.phrase_slots = phrase_slots

    def refusal(self, pixel_values: torch.Tensor, phrase_mask: torch.Tensor) -> str | None:
        """Why a call with these inputs cannot run on the program, or None when it can."""
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            return f"its images are {tuple(pixel_values.shape[-2:])}, it was exported for {self.image_size} only"
        if phrase_mask.shape[1] > self.phrase_slots:
            return f"it has {phrase_mask.shape[1]} phrase slots, more than the {self.phrase_slots} exported"
        return None

    def single_inputs(self, inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The program's inputs for each narrative of the batch `inputs`: batch 1, phrase slots padded."""
        padding = self.phrase_slots - inputs["phrase_mask"].shape[1]
        phrase_mask = torch.nn.functional.pad(inputs["phrase_mask"], (0, padding), value=False)
        padded = {**inputs, "phrase_mask": phrase_mask}
        return [{name: value[index : index + 1] for name, value in padded.items()} for index in range(len(phrase_mask))]

    def __call__(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reason = self.refusal(inputs["pixel_values"], inputs["phrase_mask"])
        if reason is not None:
            raise ValueError(f"the exported program cannot run this call: {reason}")
        num_phrases = inputs["phrase_mask"].shape[1]
        outputs = [self.program(**single) for single in self.single_inputs(inputs)]
        per_output = zip(*outputs, strict=True)  # each output of the program, over the narratives
        return tuple(torch.cat([output[:, :num_phrases] for output in narratives]) for narratives in per_output)


__all__ = ["FixedShapeProgram"]
