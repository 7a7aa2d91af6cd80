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
"""Mask probabilities resized to an image's size and thresholded in one go, for `EpngProcessor`'s post-processing:
bilinear (`align_corners=False`) as `F.interpolate`, within one float32 rounding of it where a faster route exists.

On a CPU with numba installed (`epng[fast]`), the fast routes run as one compiled loop nest that resizes, thresholds,
sums and counts while each row is in the caches, instead of several torch passes over the resized probabilities."""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .numba_kernels import compile_kernel

# On the CPU, a resize to at least this many output pixels (all phrases of a chunk) runs as two passes of lerps, the
# second one block of rows at a time (at most this many float32 pixels, which stay in the caches while they are
# thresholded): for fewer, the per-call cost of its lerps outweighs the gain over `F.interpolate`.
_BLOCKED_RESIZE_MIN_PIXELS = 2**20
_RESIZE_BLOCK_PIXELS = 2**19


def _integer_upsampling_phases(factor: int) -> list[tuple[int, float]]:
    """
    Bilinear upsampling (`align_corners=False`) by an integer `factor` along one axis: output `factor * k + phase`
    blends inputs `k + first - 1` and `k + first` (of the input padded with one replicated sample each side) as
    `lerp(..., weight)`. One `(first, weight)` per phase.
    """
    phases = []
    for phase in range(factor):
        offset = (phase + 0.5) / factor - 0.5  # where the output sample falls, relative to input k
        phases.append((2, offset) if offset >= 0 else (1, 1.0 + offset))
    return phases


def _upsample_by_integer(values: torch.Tensor, factor: int, dim: int, out: torch.Tensor) -> torch.Tensor:
    """`values` bilinearly upsampled by the integer `factor` along `dim`, into `out` (`dim` of size `factor` times
    larger)."""
    size = values.shape[dim]
    padded = torch.cat([values.narrow(dim, 0, 1), values, values.narrow(dim, size - 1, 1)], dim)
    phases = out.unflatten(dim, (size, factor))
    for phase, (first, weight) in enumerate(_integer_upsampling_phases(factor)):
        before, after = padded.narrow(dim, first - 1, size), padded.narrow(dim, first, size)
        torch.lerp(before, after, weight, out=phases.select(dim + 1, phase))
    return out


@functools.lru_cache(maxsize=64)
def _linear_sources(input_size: int, output_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Bilinear resize (`align_corners=False`) along one axis, as PyTorch's kernel weighs it: per output, the inputs
    `first` and `second` (int64 `(output_size,)`) it blends and the weight of `second` (float32), for `lerp`.
    """
    scale = np.float32(input_size) / np.float32(output_size)
    # The source coordinate rounded once, as the fused multiply-add of the compiled kernel rounds it.
    source = np.float64(scale) * (np.arange(output_size) + 0.5) - 0.5
    source = np.maximum(source.astype(np.float32), np.float32(0.0))
    first = np.minimum(np.floor(source).astype(np.int64), input_size - 1)
    weights = np.clip(source - first.astype(np.float32), 0.0, 1.0).astype(np.float32)
    second = np.minimum(first + 1, input_size - 1)
    return first, second, weights


@functools.lru_cache(maxsize=64)
def _linear_source_runs(input_size: int, output_size: int) -> tuple[tuple[int, int, int, int, torch.Tensor], ...]:
    """[`_linear_sources`] per run of consecutive outputs `[start, end)` that blend the same inputs `first` and
    `second`: `(start, end, first, second, weights)`, the weights a float32 tensor `(end - start,)`."""
    first, second, weights = _linear_sources(input_size, output_size)
    bounds = (np.flatnonzero(np.diff(first)) + 1).tolist()
    return tuple(
        (start, end, int(first[start]), int(second[start]), torch.from_numpy(weights[start:end].copy()))
        for start, end in zip([0, *bounds], [*bounds, output_size], strict=True)
    )


def _phased_resize_and_threshold(probabilities: torch.Tensor, masks: torch.Tensor, below: float) -> torch.Tensor:
    """[`resize_and_threshold`] to an integer multiple of the mask size: columns by one lerp per output phase, then
    rows the same way, each phase's rows thresholded and summed as they come."""
    num_phrases, height, width = probabilities.shape
    target_height, target_width = masks.shape[-2:]
    # Columns first, with one replicated row each side for the row pass.
    columns = probabilities.new_empty((num_phrases, height + 2, target_width))
    _upsample_by_integer(probabilities, target_width // width, 2, columns[:, 1:-1])
    columns[:, 0], columns[:, -1] = columns[:, 1], columns[:, -2]
    row_factor = target_height // height
    mask_rows = masks.view(num_phrases, height, row_factor, target_width)
    rows = probabilities.new_empty((num_phrases, height, target_width))
    sums = probabilities.new_zeros((num_phrases,))
    for phase, (first, weight) in enumerate(_integer_upsampling_phases(row_factor)):
        torch.lerp(columns[:, first - 1 : first - 1 + height], columns[:, first : first + height], weight, out=rows)
        inside = F.threshold_(rows, below, 0.0)
        mask_rows[:, :, phase].copy_(inside)
        sums += inside.sum(dim=(1, 2))
    return sums


def _blocked_resize_and_threshold(probabilities: torch.Tensor, masks: torch.Tensor, below: float) -> torch.Tensor:
    """[`resize_and_threshold`] to any size: columns by one lerp per run of outputs that blend the same two inputs,
    then rows the same way into blocks of at most `_RESIZE_BLOCK_PIXELS`, each block thresholded and summed while it
    is in the caches."""
    num_phrases, height, width = probabilities.shape
    target_height, target_width = masks.shape[-2:]
    columns = probabilities.new_empty((num_phrases, height, target_width))
    for start, end, first, second, weights in _linear_source_runs(width, target_width):
        before, after = probabilities[:, :, first : first + 1], probabilities[:, :, second : second + 1]
        torch.lerp(before, after, weights.view(1, 1, -1), out=columns[:, :, start:end])
    rows_per_block = max(1, _RESIZE_BLOCK_PIXELS // (num_phrases * target_width))
    # Runs longer than a block (a large upsampling) are cut: each output row depends on its own weight only.
    pieces = []
    for start, end, first, second, weights in _linear_source_runs(height, target_height):
        for piece_start in range(start, end, rows_per_block):
            piece_end = min(piece_start + rows_per_block, end)
            piece_weights = weights[piece_start - start : piece_end - start].view(1, -1, 1)
            pieces.append((piece_start, piece_end, first, second, piece_weights))
    block = probabilities.new_empty((num_phrases, rows_per_block, target_width))
    sums = probabilities.new_zeros((num_phrases,))
    block_start = 0
    for index, (start, end, first, second, weights) in enumerate(pieces):
        before, after = columns[:, first : first + 1], columns[:, second : second + 1]
        torch.lerp(before, after, weights, out=block[:, start - block_start : end - block_start])
        if index + 1 == len(pieces) or pieces[index + 1][1] - block_start > rows_per_block:
            inside = F.threshold_(block[:, : end - block_start], below, 0.0)
            masks[:, block_start:end].copy_(inside)
            sums += inside.sum(dim=(1, 2))
            block_start = end
    return sums


def _fused_resize_and_threshold(
    probabilities,
    row_first,
    row_second,
    row_weights,
    column_first,
    column_second,
    column_weights,
    below,
    masks,
    sums,
    counts,
):
    """
    The fast routes in one loop nest, for numba: per phrase, the columns of every input row (gathered by
    `column_first` / `column_second`), then per output row the blend of two of those rows, thresholded, summed and
    counted in the same pass. Both blends are `torch.lerp`'s, with its fused multiply-add: `a + w * (b - a)` below a
    weight of one half, `b + (w - 1) * (b - a)` from there on.

    Args:
        probabilities: float32 `(P, h, w)`.
        row_first, row_second, row_weights, column_first, column_second, column_weights: [`_linear_sources`] of the
            rows (`h` to `H`) and of the columns (`w` to `W`).
        below: float32; a pixel is in its mask where its probability is `> below`.
        masks: bool `(P, H, W)`, written.
        sums, counts: float32 and int64 `(P,)`, written: the sum of the probabilities inside each mask and its size.
    """
    num_phrases, height, _ = probabilities.shape
    target_height, target_width = row_first.shape[0], column_first.shape[0]
    columns = np.empty((height, target_width), np.float32)
    # One accumulator per output column, so that the row loop has no reduction across its lanes and vectorises.
    column_sums = np.empty(target_width, np.float64)
    column_counts = np.empty(target_width, np.int64)
    for phrase in range(num_phrases):
        for row in range(height):
            source, resized = probabilities[phrase, row], columns[row]
            for column in range(target_width):
                a, b, weight = source[column_first[column]], source[column_second[column]], column_weights[column]
                resized[column] = a + weight * (b - a) if weight < 0.5 else b + (weight - np.float32(1.0)) * (b - a)
        column_sums[:] = 0.0
        column_counts[:] = 0
        for target_row in range(target_height):
            first_row, second_row = columns[row_first[target_row]], columns[row_second[target_row]]
            weight = row_weights[target_row]
            small = weight < 0.5
            factor = weight if small else weight - np.float32(1.0)
            base = first_row if small else second_row
            mask = masks[phrase, target_row]
            for column in range(target_width):
                value = base[column] + factor * (second_row[column] - first_row[column])
                inside = value > below
                mask[column] = inside
                column_sums[column] += value if inside else 0.0
                column_counts[column] += inside
        sums[phrase] = column_sums.sum()
        counts[phrase] = column_counts.sum()


_FUSED_KERNEL_SIGNATURE = (
    "void(float32[:, :, ::1], int64[::1], int64[::1], float32[::1], int64[::1], int64[::1], float32[::1], float32, "
    "boolean[:, :, ::1], float32[::1], int64[::1])"
)


@functools.cache
def _compiled_fused_kernel():
    """[`_fused_resize_and_threshold`] compiled by numba, or `None` where numba is not installed or cannot compile it
    (the torch routes run instead)."""
    return compile_kernel(_fused_resize_and_threshold, lambda numba: _FUSED_KERNEL_SIGNATURE, "the fused mask resize")


def _fused_resize(kernel, probabilities: torch.Tensor, masks: torch.Tensor, below: float):
    """[`_fused_resize_and_threshold`] on CPU tensors: `(sums, counts)`."""
    num_phrases, height, width = probabilities.shape
    target_height, target_width = masks.shape[-2:]
    sums = np.empty(num_phrases, np.float32)
    counts = np.empty(num_phrases, np.int64)
    kernel(
        np.ascontiguousarray(probabilities.numpy()),
        *_linear_sources(height, target_height),
        *_linear_sources(width, target_width),
        np.float32(below),
        masks.numpy(),
        sums,
        counts,
    )
    return torch.from_numpy(sums), torch.from_numpy(counts)


def _count_pixels(masks: torch.Tensor) -> torch.Tensor:
    """The number of pixels in each mask of `masks` (bool `(P, H, W)`), int32 `(P,)`."""
    if masks.device.type == "cpu":  # NumPy counts set bytes about twice as fast as a torch reduction
        return torch.tensor([np.count_nonzero(mask) for mask in masks.numpy()], dtype=torch.int32)
    return masks.view(torch.uint8).sum(dim=(1, 2), dtype=torch.int32)  # a bool sum would widen every pixel to int64


def resize_and_threshold(
    probabilities: torch.Tensor, masks: torch.Tensor, below: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Bilinear resize (`align_corners=False`) of `probabilities` `(P, h, w)` to the size of `masks` `(P, H, W)`, written
    into `masks` (bool, contiguous) as `resized > below`.

    Returns the sum of the resized probabilities inside each mask and the number of its pixels, `(P,)` each. When
    `H` is a multiple (2 or more) of `h` and `W` a multiple of `w`, as when an image has the model's input size, the
    resize runs as one pass per axis, one output phase at a time (about twice as fast as `F.interpolate` on a CPU for
    15 masks from 56 x 56 to 224 x 224). Other targets of at least `_BLOCKED_RESIZE_MIN_PIXELS` on a CPU are resized a
    block of rows at a time (2-7x faster for 15 masks from 640 x 480 to 1920 x 1080, on a 2-core AMD EPYC). On a CPU
    with numba, both routes run as the fused kernel instead (another 1.7-2.5x, counts included). All stay within one
    float32 rounding of `F.interpolate`, which resizes the rest.
    """
    num_phrases, height, width = probabilities.shape
    target_height, target_width = masks.shape[-2:]
    on_cpu = probabilities.device.type == "cpu"
    integer_multiple = not (target_height % height or target_width % width or target_height < 2 * height)
    blocked = on_cpu and masks.numel() >= _BLOCKED_RESIZE_MIN_PIXELS
    if on_cpu and (integer_multiple or blocked) and (kernel := _compiled_fused_kernel()) is not None:
        return _fused_resize(kernel, probabilities, masks, below)
    if integer_multiple:
        sums = _phased_resize_and_threshold(probabilities, masks, below)
    elif blocked:
        sums = _blocked_resize_and_threshold(probabilities, masks, below)
    else:
        resized = F.interpolate(
            probabilities[None], size=(target_height, target_width), mode="bilinear", align_corners=False
        )[0]
        inside = F.threshold_(resized, below, 0.0)
        masks.copy_(inside)
        sums = inside.sum(dim=(1, 2))
    return sums, _count_pixels(masks)


__all__ = ["resize_and_threshold"]
