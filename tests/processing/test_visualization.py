"""Figure 3 overlays and Figure 4 attention maps."""

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from modeling_epng.image_processing_epng import EpngImageProcessor
from processing.visualization import distinct_colors, draw_grounding, draw_lpa_attention

GREY = 100
RED, BLUE = (255, 0, 0), (0, 0, 255)
CAPTION = "A red kite flies over the blue sea."


def grounding_inputs(height=40, width=60):
    image = Image.new("RGB", (width, height), (GREY, GREY, GREY))
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, :10, :10] = True
    masks[1, 30:, 50:] = True
    masks[1, :10, :5] = True  # overlaps phrase 0: blended on top of it
    spans = [(0, 10), (22, 34)]  # "A red kite", "the blue sea"
    return image, spans, masks


def count_pixels_near(figure, color, box, tolerance=40):
    pixels = np.asarray(figure.crop(box), dtype=np.int64)
    return int((np.abs(pixels - np.array(color)).sum(axis=-1) <= tolerance).sum())


def test_overlay_colours_known_pixels():
    image, spans, masks = grounding_inputs()
    figure = draw_grounding(image, CAPTION, spans, masks, colors=[RED, BLUE], alpha=0.5)
    assert figure.getpixel((7, 7)) == (178, 50, 50)  # only phrase 0: 0.5 * 100 + 0.5 * (255, 0, 0), rounded
    assert figure.getpixel((55, 35)) == (50, 50, 178)  # only phrase 1
    assert figure.getpixel((2, 2)) == (89, 25, 152)  # phrase 0, then phrase 1 on top (152.5 rounds to even)
    assert figure.getpixel((30, 20)) == (GREY, GREY, GREY)  # no phrase


def test_text_panel_right_and_below():
    image, spans, masks = grounding_inputs()
    right = draw_grounding(image, CAPTION, spans, masks, colors=[RED, BLUE], text_width=120)
    assert right.width == 60 + 120 and right.height >= 40
    text_box = (60, 0, right.width, right.height)
    assert count_pixels_near(right, RED, text_box) > 0 and count_pixels_near(right, BLUE, text_box) > 0
    assert count_pixels_near(right, (0, 0, 0), text_box) > 0  # the words outside phrases stay black

    below = draw_grounding(image, CAPTION, spans, masks, colors=[RED, BLUE], text_position="below")
    assert below.width == 60 and below.height > 40
    text_box = (0, 40, below.width, below.height)
    assert count_pixels_near(below, RED, text_box) > 0 and count_pixels_near(below, BLUE, text_box) > 0


def test_long_narratives_wrap_to_more_lines():
    image, spans, masks = grounding_inputs()
    short = draw_grounding(image, CAPTION, spans, masks, text_position="below")
    long_caption = CAPTION + " It is a windy day and many people walk along the long sandy beach." * 3
    long = draw_grounding(image, long_caption, spans, masks, text_position="below")
    assert long.width == short.width and long.height > short.height + 30


def test_distinct_colors_are_distinct():
    colors = distinct_colors(12)
    assert len(set(colors)) == 12
    distances = [np.abs(np.subtract(a, b)).sum() for i, a in enumerate(colors) for b in colors[i + 1 :]]
    assert min(distances) > 30


def test_draw_grounding_bad_inputs():
    image, spans, masks = grounding_inputs()
    with pytest.raises(ValueError, match=r"shape \(P, 40, 60\)"):
        draw_grounding(image, CAPTION, spans, masks[:, :20])
    with pytest.raises(ValueError, match="1 phrase spans for 2 masks"):
        draw_grounding(image, CAPTION, spans[:1], masks)
    with pytest.raises(ValueError, match="text_position"):
        draw_grounding(image, CAPTION, spans, masks, text_position="left")
    with pytest.raises(ValueError, match="1 colours for 2 phrases"):
        draw_grounding(image, CAPTION, spans, masks, colors=[RED])


def shifted_attention(grid_height, grid_width, heads=2):
    """Head 0: token i attends only to token i + 1 (mod N); head 1: only to itself."""
    num_tokens = grid_height * grid_width
    attention = torch.zeros(1, heads, num_tokens, num_tokens)
    attention[0, 0, torch.arange(num_tokens), (torch.arange(num_tokens) + 1) % num_tokens] = 1.0
    attention[0, 1] = torch.eye(num_tokens)
    return attention


def test_attention_heat_map_follows_the_query_pixel():
    # 64x96 model input -> 4x6 grid; the 36x54 original makes every grid cell 9x9 original pixels.
    image = Image.new("RGB", (54, 36), (GREY, GREY, GREY))
    attentions = (torch.zeros(1, 2, 24, 24), shifted_attention(4, 6))
    processor = EpngImageProcessor(size={"height": 64, "width": 96})
    pixel = (22, 31)  # grid cell (2, 3) = token 15; head 0 sends it to token 16 = cell (2, 4)
    figure = draw_lpa_attention(image, attentions, pixel=pixel, layer=1, head=0, image_processor=processor)
    assert figure.size == image.size

    hottest = np.asarray(matplotlib.colormaps["jet"](1.0)[:3]) * 255
    expected = tuple(np.round(0.5 * GREY + 0.5 * hottest).astype(int))
    assert figure.getpixel((9 * 4 + 4, 9 * 2 + 4)) == expected  # centre of cell (2, 4)
    coldest = tuple(np.round(0.5 * GREY + 0.5 * np.asarray(matplotlib.colormaps["jet"](0.0)[:3]) * 255).astype(int))
    assert figure.getpixel((4, 4)) == coldest

    own_cell = draw_lpa_attention(image, attentions, pixel=pixel, layer=1, head=1, grid_size=(4, 6))
    assert own_cell.getpixel((9 * 3 + 4, 9 * 2 + 4)) == expected  # head 1 attends to the query's own cell (2, 3)
    mean_of_heads = draw_lpa_attention(image, attentions, pixel=pixel, layer=1, grid_size=(4, 6))
    assert mean_of_heads.getpixel((9 * 4 + 4, 9 * 2 + 4)) == expected  # both cells share the maximum (0.5 each)
    assert mean_of_heads.getpixel((9 * 3 + 4, 9 * 2 + 4)) == expected


def test_draw_lpa_attention_bad_inputs():
    image = Image.new("RGB", (54, 36))
    attentions = (shifted_attention(4, 6),)
    with pytest.raises(ValueError, match="grid_size"):
        draw_lpa_attention(image, attentions, pixel=(0, 0))
    with pytest.raises(ValueError, match="N=24 tokens but the grid 5x6"):
        draw_lpa_attention(image, attentions, pixel=(0, 0), grid_size=(5, 6))
    with pytest.raises(ValueError, match="outside"):
        draw_lpa_attention(image, attentions, pixel=(36, 0), grid_size=(4, 6))
