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
"""Image processor of EPNG: images → `pixel_values`, panoptic maps + phrase segment ids → `mask_labels`.

The pipeline follows the paper's recipe: resize to a fixed model size with bicubic interpolation,
rescale by 1/255 and normalise with the CLIP mean and std. Resizing runs in PyTorch (antialiased bicubic, which
matches PIL's bicubic filter within one grey level) so one code path serves PIL images, NumPy arrays and tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .configuration_epng import check_input_size
from .pixel_lookup import compiled_pixel_lookup, lookup_pixels

EPNG_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
EPNG_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

_TORCH_INTERPOLATION = {
    PILImageResampling.BICUBIC: "bicubic",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.NEAREST: "nearest-exact",
}
_SIXTEEN_BIT_PIL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_CHANNEL_COUNTS = (1, 3, 4)
# The EXIF orientations that `ImageOps.exif_transpose` turns upright (1 is upright already).
_EXIF_TRANSPOSED_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)


class EpngImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of [`EpngImageProcessor`]: the standard `ImagesKwargs` (EPNG uses `do_resize`, `size`,
    `resample`, `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean`, `image_std`, `input_data_format`
    and `return_tensors`)."""


def decode_panoptic_map(panoptic_map: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """
    Turn a COCO panoptic map into an array of segment ids.

    Args:
        panoptic_map (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            Either an RGB-encoded map (PIL image in mode RGB/RGBA/P, or an `(H, W, 3)` uint8 array), whose segment id
            is `R + 256 * G + 256**2 * B`, or an `(H, W)` integer array (or PIL image in mode L/I/I;16) that already
            holds the ids. 0 means unlabelled.

    Returns:
        `np.ndarray` of shape `(H, W)` and dtype int64: the segment id of every pixel.
    """
    if isinstance(panoptic_map, Image.Image):
        if panoptic_map.mode in ("L", "I") or panoptic_map.mode.startswith("I;16"):
            array = np.asarray(panoptic_map)
        else:
            array = np.asarray(panoptic_map.convert("RGB"))
    elif isinstance(panoptic_map, torch.Tensor):
        array = panoptic_map.detach().cpu().numpy()
    elif isinstance(panoptic_map, np.ndarray):
        array = panoptic_map
    else:
        raise TypeError(f"A panoptic map must be a PIL image, a NumPy array or a tensor, got {type(panoptic_map)}.")

    if array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        rgb = array[..., :3].astype(np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    raise ValueError(
        "A panoptic map must be an RGB-encoded (H, W, 3) uint8 map or an (H, W) integer id map, got shape "
        f"{tuple(array.shape)} and dtype {array.dtype}."
    )


def resize_id_map(id_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    Nearest-neighbour resize of an integer id map, sampling at pixel centres (like PIL's NEAREST and torch's
    `nearest-exact`), so ids are never blended into ids that do not exist.

    Args:
        id_map (`np.ndarray` of shape `(H, W)`): Segment ids.
        height (`int`): Output height.
        width (`int`): Output width.

    Returns:
        `np.ndarray` of shape `(height, width)`, same dtype as `id_map`.
    """
    source_height, source_width = id_map.shape
    rows = np.minimum(((np.arange(height) + 0.5) * source_height / height).astype(np.int64), source_height - 1)
    columns = np.minimum(((np.arange(width) + 0.5) * source_width / width).astype(np.int64), source_width - 1)
    return id_map[rows[:, None], columns[None, :]]


def _infer_layout(shape: Sequence[int], default: ChannelDimension) -> ChannelDimension:
    """Channel layout of a 3-D array: the side that holds 1, 3 or 4 values is the channel axis; `default` when
    both (e.g. a 3x4x3 array) or neither do."""
    first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
    if first and not last:
        return ChannelDimension.FIRST
    if last and not first:
        return ChannelDimension.LAST
    if first and last:
        return default
    raise ValueError(f"Cannot find the channel axis of an image of shape {tuple(shape)}: expected 1, 3 or 4 channels.")


def _pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """PIL image → `(H, W, 3)` array on the 0–255 scale (uint8, or float32 for 16-bit images), EXIF orientation
    applied. Alpha is dropped (as `Image.convert("RGB")` does in the reference pipelines)."""
    image.load()  # a PNG may store its EXIF after the pixels
    if image.getexif().get(ExifTags.Base.Orientation, 1) in _EXIF_TRANSPOSED_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)  # (without an orientation to apply, it would only copy the image)
    if image.mode in _SIXTEEN_BIT_PIL_MODES:
        # PIL's own conversion clips 16-bit values at 255; scale the 0–65535 range down instead.
        gray = np.asarray(image, dtype=np.float32) / 257.0
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode in ("P", "PA"):
        # Going through RGBA resolves palette transparency without PIL's "convert to RGBA" warning.
        image = image.convert("RGBA")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _array_to_rgb_tensor(
    array: np.ndarray | torch.Tensor, input_data_format: ChannelDimension | str | None
) -> torch.Tensor:
    """NumPy array (HWC by default) or tensor (CHW by default) → float tensor `(3, H, W)` on the 0–255 scale."""
    is_tensor = isinstance(array, torch.Tensor)
    tensor = array.detach().cpu() if is_tensor else torch.from_numpy(np.array(array))
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"Images must hold real numbers, got dtype {tensor.dtype}.")
    if tensor.ndim == 2:
        tensor = tensor[None]
    elif tensor.ndim == 3:
        if input_data_format is not None:
            layout = ChannelDimension(input_data_format)
        else:
            layout = _infer_layout(tensor.shape, ChannelDimension.FIRST if is_tensor else ChannelDimension.LAST)
        if layout == ChannelDimension.LAST:
            tensor = tensor.permute(2, 0, 1)
    else:
        raise ValueError(f"An image must have 2 or 3 dimensions, got shape {tuple(tensor.shape)}.")

    num_channels = tensor.shape[0]
    if num_channels not in _CHANNEL_COUNTS:
        raise ValueError(f"An image must have 1, 3 or 4 channels, got {num_channels} (shape {tuple(tensor.shape)}).")
    is_sixteen_bit = tensor.dtype == torch.uint16
    tensor = tensor.to(torch.float32, memory_format=torch.contiguous_format)
    if is_sixteen_bit:
        tensor = tensor / 257.0
    # Grayscale is repeated to RGB; the alpha channel is dropped.
    return tensor.expand(3, -1, -1) if num_channels == 1 else tensor[:3]


def segment_union_masks(id_map: np.ndarray, phrase_segment_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """(P, H, W) bool: per phrase, the pixels of `id_map` whose segment id is one of the phrase's ids."""
    masks = np.zeros((len(phrase_segment_ids), *id_map.shape), dtype=bool)
    for mask, segment_ids in zip(masks, phrase_segment_ids, strict=True):
        # One equality pass per id: a phrase has a few ids, where this is about 2.5x faster than np.isin.
        for segment_id in segment_ids:
            np.logical_or(mask, id_map == int(segment_id), out=mask)
    return masks


def _to_rgb_tensor(
    image: Any, input_data_format: ChannelDimension | str | None
) -> tuple[torch.Tensor | np.ndarray, bool]:
    """One image → (float `(3, H, W)` tensor, whether its values are integers on the 0–255 scale). An 8-bit PIL image
    comes as its uint8 `(3, H, W)` array instead (a view of the decoded pixels): `_transform` casts it in the pass that
    rescales it where the image needs no resize, and in a copy of its own before a resize."""
    if isinstance(image, Image.Image):
        array = _pil_to_rgb_array(image).transpose(2, 0, 1)
        if array.dtype == np.uint8:
            return array, True
        return torch.from_numpy(np.array(array, dtype=np.float32)), True
    if isinstance(image, torch.Tensor):
        return _array_to_rgb_tensor(image, input_data_format), not image.dtype.is_floating_point
    if isinstance(image, np.ndarray):
        return _array_to_rgb_tensor(image, input_data_format), not np.issubdtype(image.dtype, np.floating)
    raise TypeError(f"Images must be PIL images, NumPy arrays or torch tensors, got {type(image)}.")


def _as_image_list(images: Any) -> list:
    """A single image, a list/tuple of images or a 4-D batch array/tensor → list of single images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


def _rescale_and_normalize(
    image: torch.Tensor | np.ndarray,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: tuple[float, ...],
    image_std: tuple[float, ...],
) -> torch.Tensor:
    """`(image * rescale_factor - mean) / std` (each step where asked) into a new contiguous float32 tensor, from a
    float `(3, H, W)` tensor (the caller's, or a resized image) or the uint8 `(3, H, W)` array of an 8-bit image."""
    owned = False
    if isinstance(image, np.ndarray):
        if do_rescale:
            # Cast and rescale in one pass, into a new array: the float32 product is that of the cast pixels.
            rescaled = np.multiply(image, np.float32(rescale_factor), dtype=np.float32, order="C")
            image, do_rescale, owned = torch.from_numpy(rescaled), False, True
        else:
            image = torch.from_numpy(np.array(image, dtype=np.float32))
    # The same operations, written into one contiguous output (the input may be the caller's tensor, or the decoded
    # image cast to float in its channels-last order); an image already cast and rescaled above is a new array of its
    # own, normalised in place.
    output = image if owned else torch.empty_like(image, memory_format=torch.contiguous_format)
    if do_rescale:
        image = torch.mul(image, rescale_factor, out=output)
    if do_normalize:
        mean = torch.tensor(image_mean, dtype=image.dtype).view(-1, 1, 1)
        std = torch.tensor(image_std, dtype=image.dtype).view(-1, 1, 1)
        image = torch.sub(image, mean, out=output).div_(std)
    return image if image is output else output.copy_(image)


@functools.lru_cache(maxsize=16)
def _level_values(
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: tuple[float, ...],
    image_std: tuple[float, ...],
) -> np.ndarray:
    """float32 `(3, 256)`: what [`_rescale_and_normalize`] gives each 8-bit level of each channel, by the same
    operations (elementwise, so each value is the one it gives that level in any image)."""
    levels = np.ascontiguousarray(np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 1, 256)))
    values = _rescale_and_normalize(levels, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
    return values[:, 0].numpy()


class EpngImageProcessor(BaseImageProcessor):
    r"""
    Image processor of EPNG. Resizes every image to one fixed model size (bicubic, as in the paper), rescales by
    1/255 and normalises with the CLIP mean/std; optionally builds the per-phrase mask targets from panoptic maps.

    Accepted images: PIL images (any mode: grayscale, RGBA, palette and 16-bit images become RGB; the EXIF
    orientation is applied), NumPy arrays in HWC (or HW) layout and torch tensors in CHW (or HWC, or HW) layout; the
    layout is inferred from which axis has 1, 3 or 4 entries, `input_data_format` overrides it. Array values are on
    the 0–255 scale (16-bit arrays on 0–65535 are scaled down); pass `do_rescale=False` for values already in
    [0, 1]. A list of images or a 4-D batch is a batch. Alpha channels are dropped.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize images to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 640, "width": 640}`):
            Model input size; both sides must be multiples of `INPUT_SIZE_MULTIPLE` (32, the network's largest
            stride).
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BICUBIC`):
            Interpolation of the image resize: `BICUBIC`, `BILINEAR` or `NEAREST`. Bicubic and bilinear are
            antialiased; integer (0–255) images are clamped back to [0, 255] after bicubic overshoot, as PIL does.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Whether to multiply pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            Rescale factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise with `image_mean` and `image_std`.
        image_mean (`tuple[float]`, *optional*, defaults to the CLIP mean `(0.4815, 0.4578, 0.4082)`):
            Per-channel mean.
        image_std (`tuple[float]`, *optional*, defaults to the CLIP std `(0.2686, 0.2613, 0.2758)`):
            Per-channel standard deviation.
    """

    valid_kwargs = EpngImageProcessorKwargs
    model_input_names = ["pixel_values"]

    do_resize = True
    size = {"height": 640, "width": 640}
    resample = PILImageResampling.BICUBIC
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = EPNG_IMAGE_MEAN
    image_std = EPNG_IMAGE_STD

    def __init__(self, **kwargs: Unpack[EpngImageProcessorKwargs]):
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)
        self._validate_size(self.size, self.do_resize)

    @staticmethod
    def _validate_size(size: SizeDict | None, do_resize: bool | None) -> None:
        if not do_resize:
            return
        if size is None or size.height is None or size.width is None:
            raise ValueError(f"EpngImageProcessor needs `size` as {{'height': H, 'width': W}}, got {size}.")
        check_input_size(size.height, size.width, "EpngImageProcessor `size`")

    def _validate_preprocess_kwargs(self, do_resize=None, size=None, resample=None, **kwargs) -> None:
        super()._validate_preprocess_kwargs(do_resize=do_resize, size=size, resample=resample, **kwargs)
        self._validate_size(size, do_resize)
        if do_resize and PILImageResampling(resample) not in _TORCH_INTERPOLATION:
            raise ValueError(
                f"Unsupported resample {PILImageResampling(resample).name}: use BICUBIC, BILINEAR or NEAREST."
            )

    def preprocess(
        self,
        images: Any,
        panoptic_maps: Any | None = None,
        phrase_segment_ids: Sequence[Sequence[Sequence[int]]] | None = None,
        known_segment_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Unpack[EpngImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Preprocess an image or a batch of images and, optionally, build their mask targets.

        Args:
            images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The image(s); see the class docstring for the accepted forms.
            panoptic_maps (panoptic map or list of panoptic maps, *optional*):
                One panoptic map per image at the image's original resolution (see [`decode_panoptic_map`]).
            phrase_segment_ids (`list[list[list[int]]]`, *optional*):
                Per image, per phrase, the panoptic segment ids whose union is the phrase's mask. Required with
                `panoptic_maps`.
            known_segment_ids (`list[list[int]]`, *optional*):
                Per image, the ids every phrase segment id is checked against (e.g. the ids of `segments_info`).
                Defaults to the ids present in the panoptic map.
            kwargs (`EpngImageProcessorKwargs`, *optional*):
                Per-call overrides of the processor's settings, and `return_tensors` (`"pt"` stacks the batch,
                `"np"` gives NumPy arrays, `None` leaves lists of per-image tensors).

        Returns:
            [`BatchFeature`] with
            - `pixel_values`: float `(B, 3, height, width)`;
            - `original_sizes`: list of `(H, W)` per image (after EXIF orientation);
            - `mask_labels` (when targets are given): list of boolean tensors `(P_i, height, width)`, one per image
              (images have different phrase counts; [`EpngProcessor`] pads them).
        """
        image_like_kwargs = {
            "panoptic_maps": panoptic_maps,
            "phrase_segment_ids": phrase_segment_ids,
            "known_segment_ids": known_segment_ids,
        }
        if kwargs.keys() - {"return_tensors"} or kwargs.get("return_tensors") not in (None, "pt", "np"):
            return super().preprocess(images, image_like_kwargs=image_like_kwargs, **kwargs)
        # No per-call setting (as the processor calls it): what `super().preprocess` does, less its type check of the
        # keyword arguments, which has nothing to check here and costs more than the rest of this call at 224 px
        # (it builds a strict dataclass of every setting).
        settings = {name: getattr(self, name, None) for name in self._valid_kwargs_names}
        settings = self._standardize_kwargs(**{**settings, **kwargs})
        self._validate_preprocess_kwargs(**settings)
        return self._preprocess_image_like_inputs(images, **image_like_kwargs, **settings)

    def _preprocess_image_like_inputs(
        self,
        images: Any,
        panoptic_maps: Any | None = None,
        phrase_segment_ids: Sequence[Sequence[Sequence[int]]] | None = None,
        known_segment_ids: Sequence[Sequence[int]] | None = None,
        **kwargs,
    ) -> BatchFeature:
        image_list = _as_image_list(images)
        pixel_values, original_sizes = [], []
        for image in image_list:
            tensor, is_integer = _to_rgb_tensor(image, kwargs.get("input_data_format"))
            original_sizes.append((int(tensor.shape[1]), int(tensor.shape[2])))
            pixel_values.append(self._transform(tensor, is_integer, **kwargs))
        data = {"pixel_values": pixel_values, "original_sizes": original_sizes}

        if panoptic_maps is not None or phrase_segment_ids is not None:
            data["mask_labels"] = self._build_mask_labels(
                panoptic_maps, phrase_segment_ids, known_segment_ids, len(image_list), pixel_values
            )

        return_tensors = kwargs.get("return_tensors")
        if return_tensors is not None:
            if len({tuple(image.shape) for image in pixel_values}) > 1:
                raise ValueError("Images of different sizes cannot be stacked: keep `do_resize=True`.")
            # One image (the pipeline's case) is a view of its own fresh tensor: stacking would copy it.
            images = data["pixel_values"]
            data["pixel_values"] = images[0][None] if len(images) == 1 else torch.stack(images)
            if str(return_tensors) in ("np", "TensorType.NUMPY"):
                data["pixel_values"] = data["pixel_values"].numpy()
                if "mask_labels" in data:
                    data["mask_labels"] = [labels.numpy() for labels in data["mask_labels"]]
        return BatchFeature(data=data)

    def _transform(
        self,
        image: torch.Tensor | np.ndarray,
        is_integer: bool,
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        **unused_kwargs,
    ) -> torch.Tensor:
        """Resize, rescale and normalise one float `(3, H, W)` image (or the uint8 array of an 8-bit PIL image), into a
        new contiguous tensor."""
        # Resizing to the size the image has is the identity (every kernel weight is 1 or 0): skipped, it gives the
        # same values without a pass over the image.
        resizes = do_resize and tuple(image.shape[-2:]) != (size.height, size.width)
        if not do_resize:
            check_input_size(image.shape[-2], image.shape[-1], "Without resizing, image sides")
        scaling = (do_rescale, float(rescale_factor), do_normalize, tuple(image_mean), tuple(image_std))
        if isinstance(image, np.ndarray):
            if not resizes and (kernel := compiled_pixel_lookup()) is not None:
                # An 8-bit image has 256 levels per channel: their values, computed as below, looked up per pixel.
                return lookup_pixels(kernel, image, _level_values(*scaling))
            if resizes:
                image = torch.from_numpy(np.array(image, dtype=np.float32))
        if resizes:
            mode = _TORCH_INTERPOLATION[PILImageResampling(resample)]
            image = F.interpolate(
                image[None],
                size=(size.height, size.width),
                mode=mode,
                **({} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}),
            )[0]
            if is_integer and mode == "bicubic":
                image = image.clamp(0.0, 255.0)
        return _rescale_and_normalize(image, *scaling)

    def _build_mask_labels(self, panoptic_maps, phrase_segment_ids, known_segment_ids, batch_size, pixel_values):
        if panoptic_maps is None or phrase_segment_ids is None:
            raise ValueError("Mask targets need both `panoptic_maps` and `phrase_segment_ids`.")
        maps = _as_image_list(panoptic_maps)
        if len(maps) != batch_size or len(phrase_segment_ids) != batch_size:
            raise ValueError(
                f"Got {batch_size} images, {len(maps)} panoptic maps and {len(phrase_segment_ids)} phrase segment id "
                "lists: give exactly one of each per image."
            )
        if known_segment_ids is not None and len(known_segment_ids) != batch_size:
            raise ValueError(f"Got {len(known_segment_ids)} `known_segment_ids` lists for {batch_size} images.")
        return [
            self.phrase_masks(
                maps[index],
                phrase_segment_ids[index],
                size=tuple(pixel_values[index].shape[-2:]),
                known_segment_ids=None if known_segment_ids is None else known_segment_ids[index],
            )
            for index in range(batch_size)
        ]

    def phrase_masks(
        self,
        panoptic_map: Image.Image | np.ndarray | torch.Tensor,
        phrase_segment_ids: Sequence[Sequence[int]],
        size: tuple[int, int] | None = None,
        known_segment_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """
        One boolean mask per phrase: the union of its panoptic segments.

        The id map is resized once (nearest, at pixel centres) and then compared with each phrase's ids, so no
        full-resolution float mask is ever made per phrase. This equals resizing each binary mask bilinearly and
        re-binarising at 0.5 (the reference recipe) except on pixels at segment boundaries.

        Args:
            panoptic_map (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
                The panoptic map at the image's original resolution (see [`decode_panoptic_map`]).
            phrase_segment_ids (`list[list[int]]`):
                Per phrase, the segment ids of its mask.
            size (`tuple[int, int]`, *optional*):
                `(height, width)` of the masks; defaults to the map's own (original) resolution.
            known_segment_ids (`list[int]`, *optional*):
                The ids the phrase ids are checked against; defaults to the ids present in the map.

        Returns:
            `torch.BoolTensor` of shape `(P, height, width)`.

        Raises:
            `ValueError`: if a phrase names a segment id that is not known.
        """
        id_map = decode_panoptic_map(panoptic_map)
        known = set(np.unique(id_map).tolist()) if known_segment_ids is None else {int(i) for i in known_segment_ids}
        for phrase_index, segment_ids in enumerate(phrase_segment_ids):
            missing = [int(i) for i in segment_ids if int(i) not in known]
            if missing:
                raise ValueError(
                    f"Phrase {phrase_index} refers to segment id(s) {missing} that are not in the panoptic map "
                    f"(known ids: {sorted(known)[:20]}{' ...' if len(known) > 20 else ''})."
                )
        if size is not None and tuple(size) != id_map.shape:
            id_map = resize_id_map(id_map, *size)
        return torch.from_numpy(segment_union_masks(id_map, phrase_segment_ids))


__all__ = [
    "EPNG_IMAGE_MEAN",
    "EPNG_IMAGE_STD",
    "EpngImageProcessor",
    "decode_panoptic_map",
    "resize_id_map",
    "segment_union_masks",
]
