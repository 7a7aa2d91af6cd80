"""Figures of the EPNG paper: grounding overlays with the coloured narrative (Figure 3) and LPA attention maps of one
pixel token (Figure 4)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import matplotlib
import matplotlib.font_manager
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps

from modeling_epng.image_processing_epng import EpngImageProcessor

# LPA runs on the fused stride-16 feature grid.
LPA_STRIDE = 16
_TEXT_COLOR = (0, 0, 0)
_BACKGROUND_COLOR = (255, 255, 255)


def distinct_colors(count: int) -> list[tuple[int, int, int]]:
    """
    `count` well-separated RGB colours: hues stepped by the golden ratio, so neighbouring phrases never get
    similar colours whatever their number.

    Args:
        count (`int`): Number of colours.

    Returns:
        `list[tuple[int, int, int]]`
    """
    golden_ratio_conjugate = 0.618033988749895
    colors = []
    for index in range(count):
        red, green, blue = colorsys.hsv_to_rgb((index * golden_ratio_conjugate) % 1.0, 0.85, 0.9)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def _as_rgb_image(image: Image.Image) -> Image.Image:
    """The image as the processor sees it: EXIF orientation applied, RGB."""
    return ImageOps.exif_transpose(image).convert("RGB")


def _load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib; it covers accented and most non-Latin letters, which PIL's built-in
    font lacks), else PIL's default font."""
    try:
        return ImageFont.truetype(matplotlib.font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except (OSError, ValueError):
        return ImageFont.load_default(size=size)


def _wrap_colored_text(
    text: str,
    character_colors: list[tuple[int, int, int]],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    max_width: int,
) -> list[list[tuple[str, tuple[int, int, int], float]]]:
    """Greedy word wrap of a text whose characters carry colours. Returns lines of (run text, colour, x offset)."""
    space_width = font.getlength(" ")
    lines: list[list[tuple[str, tuple[int, int, int], float]]] = [[]]
    x = 0.0
    position = 0
    for word in text.split(" "):
        word_colors = character_colors[position : position + len(word)]
        position += len(word) + 1
        if not word:
            x += space_width  # keep repeated spaces
            continue
        word_width = font.getlength(word)
        if x > 0 and x + word_width > max_width:
            lines.append([])
            x = 0.0
        # Split the word into runs of one colour (a phrase may start or end inside a word).
        run_start = 0
        for index in range(1, len(word) + 1):
            if index == len(word) or word_colors[index] != word_colors[run_start]:
                run = word[run_start:index]
                lines[-1].append((run, word_colors[run_start], x))
                x += font.getlength(run)
                run_start = index
        x += space_width
    return lines


def draw_grounding(
    image: Image.Image,
    caption: str,
    phrase_spans: Sequence[tuple[int, int]],
    masks: torch.Tensor | np.ndarray,
    colors: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.5,
    text_position: str = "right",
    text_width: int | None = None,
    font_size: int = 14,
    margin: int = 8,
) -> Image.Image:
    """
    The image with every phrase's mask blended in its own colour, beside the narrative with each phrase written
    in the same colour (the paper's Figure 3).

    Args:
        image (`PIL.Image.Image`):
            The original image (its EXIF orientation is applied, as by the processor).
        caption (`str`):
            The narrative.
        phrase_spans (`list[tuple[int, int]]`):
            `(char_start, char_end)` of every phrase, in the order of `masks`.
        masks (`torch.Tensor` or `np.ndarray` of shape `(P, H, W)`):
            Boolean masks at the image's resolution (e.g. `post_process_grounding(...)[i]["masks"]`).
        colors (`list[tuple[int, int, int]]`, *optional*):
            One RGB colour per phrase; defaults to [`distinct_colors`].
        alpha (`float`, *optional*, defaults to 0.5):
            Opacity of the mask colour: a masked pixel becomes `(1 - alpha) * pixel + alpha * colour`. Where masks
            overlap, later phrases are blended on top.
        text_position (`str`, *optional*, defaults to `"right"`):
            `"right"` or `"below"` the image.
        text_width (`int`, *optional*):
            Width of the text panel in pixels; defaults to the image width.
        font_size (`int`, *optional*, defaults to 14):
            Font size of the narrative (DejaVu Sans from matplotlib, else PIL's default font).
        margin (`int`, *optional*, defaults to 8):
            Padding around the text, in pixels.

    Returns:
        `PIL.Image.Image`: the figure.
    """
    image = _as_rgb_image(image)
    masks = torch.as_tensor(masks).bool().cpu()
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (image.height, image.width):
        raise ValueError(
            f"`masks` must have shape (P, {image.height}, {image.width}) to match the image, got {tuple(masks.shape)}."
        )
    if len(phrase_spans) != masks.shape[0]:
        raise ValueError(f"Got {len(phrase_spans)} phrase spans for {masks.shape[0]} masks.")
    colors = list(colors) if colors is not None else distinct_colors(len(phrase_spans))
    if len(colors) < len(phrase_spans):
        raise ValueError(f"Got {len(colors)} colours for {len(phrase_spans)} phrases.")
    if text_position not in ("right", "below"):
        raise ValueError(f"`text_position` must be 'right' or 'below', got {text_position!r}.")

    pixels = torch.from_numpy(np.array(image, dtype=np.float32))
    for mask, color in zip(masks, colors, strict=False):
        blended = (1.0 - alpha) * pixels[mask] + alpha * torch.tensor(color, dtype=torch.float32)
        pixels[mask] = blended
    overlay = Image.fromarray(pixels.round().clamp(0, 255).to(torch.uint8).numpy())

    # Every whitespace character becomes one space, so wrapping works on spaces and character offsets still hold.
    caption = "".join(" " if character.isspace() else character for character in caption)
    character_colors = [_TEXT_COLOR] * len(caption)
    for (start, end), color in zip(phrase_spans, colors, strict=False):
        character_colors[start:end] = [tuple(color)] * (end - start)
    font = _load_font(font_size)
    panel_width = text_width if text_width is not None else image.width
    lines = _wrap_colored_text(caption, character_colors, font, panel_width - 2 * margin)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent + 2
    panel_height = len(lines) * line_height + 2 * margin

    if text_position == "right":
        canvas = Image.new("RGB", (image.width + panel_width, max(image.height, panel_height)), _BACKGROUND_COLOR)
        text_origin = (image.width + margin, margin)
    else:
        canvas = Image.new("RGB", (max(image.width, panel_width), image.height + panel_height), _BACKGROUND_COLOR)
        text_origin = (margin, image.height + margin)
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for line_index, runs in enumerate(lines):
        y = text_origin[1] + line_index * line_height
        for run, color, x in runs:
            draw.text((text_origin[0] + x, y), run, fill=color, font=font)
    return canvas


def draw_lpa_attention(
    image: Image.Image,
    attentions: Sequence[torch.Tensor],
    pixel: tuple[int, int],
    layer: int = 0,
    head: int | None = None,
    grid_size: tuple[int, int] | None = None,
    image_processor: EpngImageProcessor | None = None,
    batch_index: int = 0,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """
    Attention of one pixel token over the feature grid, as a heat map over the image (the paper's Figure 4).

    Args:
        image (`PIL.Image.Image`):
            The original image (its EXIF orientation is applied, as by the processor).
        attentions (`tuple[torch.Tensor]`):
            The model output's `attentions` (`output_attentions=True`): the LPA probabilities of each communicator
            layer, of shape `(B, heads, N, N)`, N = (H/16)·(W/16) tokens in row-major order over the H/16 × W/16 grid
            of the model input.
        pixel (`tuple[int, int]`):
            `(y, x)` of the query pixel in original image coordinates; it is marked on the figure.
        layer (`int`, *optional*, defaults to 0):
            Communicator layer to show.
        head (`int`, *optional*):
            Attention head to show; the mean over heads when `None`.
        grid_size (`tuple[int, int]`, *optional*):
            `(H/16, W/16)` of the model input. Derived from `image_processor.size` when not given.
        image_processor ([`EpngImageProcessor`], *optional*):
            The image processor that made the model input (used for `grid_size`).
        batch_index (`int`, *optional*, defaults to 0):
            Which image of the batch `attentions` belongs to.
        alpha (`float`, *optional*, defaults to 0.5):
            Opacity of the heat map.
        colormap (`str`, *optional*, defaults to `"jet"`):
            Matplotlib colormap name.

    Returns:
        `PIL.Image.Image` of the image's size: the heat map (attention normalised to [0, 1] by its maximum)
        blended over the image, with the query pixel marked by a white ring.
    """
    image = _as_rgb_image(image)
    if grid_size is None:
        if image_processor is None:
            raise ValueError("Pass `grid_size` or the `image_processor` that made the model input.")
        grid_size = (image_processor.size.height // LPA_STRIDE, image_processor.size.width // LPA_STRIDE)
    grid_height, grid_width = grid_size
    attention = attentions[layer][batch_index].detach().float().cpu()
    if attention.ndim != 3 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"Expected LPA attention of shape (B, heads, N, N), got {tuple(attentions[layer].shape)}.")
    if attention.shape[-1] != grid_height * grid_width:
        raise ValueError(
            f"The attention has N={attention.shape[-1]} tokens but the grid {grid_height}x{grid_width} has "
            f"{grid_height * grid_width}."
        )
    y, x = pixel
    if not (0 <= y < image.height and 0 <= x < image.width):
        raise ValueError(f"Pixel {pixel} is outside the {image.height}x{image.width} image.")
    attention = attention.mean(dim=0) if head is None else attention[head]

    # The model input is the whole image resized, so a grid cell covers the same fraction of the original.
    query_token = (y * grid_height // image.height) * grid_width + (x * grid_width // image.width)
    heat = attention[query_token].view(1, 1, grid_height, grid_width)
    heat = F.interpolate(heat, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat / heat.max().clamp(min=torch.finfo(heat.dtype).tiny)).clamp(0, 1)
    heat_rgb = matplotlib.colormaps[colormap](heat.numpy())[..., :3] * 255.0

    blended = (1.0 - alpha) * np.asarray(image, dtype=np.float32) + alpha * heat_rgb
    figure = Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))
    radius = max(3, min(image.height, image.width) // 40)
    ImageDraw.Draw(figure).ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255), width=2)
    return figure


__all__ = ["distinct_colors", "draw_grounding", "draw_lpa_attention"]
