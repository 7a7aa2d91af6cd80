"""Consistency checks of the PNG benchmark files that go beyond their json structure: file names that stay inside
the benchmark root, image ids given once, and segment ids that are really drawn in the panoptic PNG."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath, PureWindowsPath

import PIL.Image


def unsafe_file_name_problem(file_name) -> str | None:
    """Why `file_name` (from an annotation file) may not be joined to a benchmark folder, or `None` if it may.

    An absolute name, or one with a `..` component, would read files from outside the benchmark root and embed them
    in the converted dataset.
    """
    if not isinstance(file_name, str) or not file_name.strip():
        return f"file_name {file_name!r} is not a non-empty string"
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return f"file_name {file_name!r} is an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return f"file_name {file_name!r} leaves its folder ('..')"
    return None


def duplicated_ids(ids: Iterable[int]) -> dict[int, int]:
    """`{id: number of occurrences}` for the ids occurring more than once."""
    return {value: count for value, count in Counter(ids).items() if count > 1}


def panoptic_segment_ids(png_bytes: bytes) -> set[int]:
    """The segment ids drawn in a panoptic PNG (id = R + 256·G + 256²·B; 0 is unlabelled)."""
    with PIL.Image.open(io.BytesIO(png_bytes)) as image:
        rgb = image.convert("RGB")
        # PIL counts the distinct colours in C: several times faster than np.unique over the decoded id map
        colours = rgb.getcolors(maxcolors=rgb.width * rgb.height)
    return {red + 256 * green + 256 * 256 * blue for _, (red, green, blue) in colours} - {0}
