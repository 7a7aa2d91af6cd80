"""EpngImageProcessor: input forms, resize/normalise, size validation, panoptic targets, save/load."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_epng.image_processing_epng import (
    EPNG_IMAGE_MEAN,
    EPNG_IMAGE_STD,
    EpngImageProcessor,
    decode_panoptic_map,
    resize_id_map,
)

SIZE = {"height": 64, "width": 96}
# Needs all three bytes of the RGB encoding: 3226010 = 0x31399A -> R=0x9A, G=0x39, B=0x31.
THREE_BYTE_ID = 3226010
OTHER_ID = 7


@pytest.fixture
def image_processor():
    return EpngImageProcessor(size=SIZE)


def random_image(height=30, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode_ids(id_map):
    """(H, W) ids -> RGB-encoded (H, W, 3) uint8 panoptic map."""
    return np.stack([id_map % 256, (id_map // 256) % 256, id_map // 65536], axis=-1).astype(np.uint8)


def test_defaults_follow_the_paper():
    processor = EpngImageProcessor()
    assert (processor.size.height, processor.size.width) == (640, 640)
    assert processor.resample == 3  # PIL BICUBIC
    assert tuple(processor.image_mean) == EPNG_IMAGE_MEAN
    assert tuple(processor.image_std) == EPNG_IMAGE_STD


def test_constant_image_is_rescaled_and_normalised(image_processor):
    color = (10, 128, 250)
    pixel_values = image_processor(Image.new("RGB", (50, 30), color), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 64, 96)
    expected = (torch.tensor(color) / 255.0 - torch.tensor(EPNG_IMAGE_MEAN)) / torch.tensor(EPNG_IMAGE_STD)
    torch.testing.assert_close(pixel_values[0, :, 10, 20], expected.float(), atol=1e-5, rtol=0)


def test_resize_matches_pil_bicubic_within_one_level():
    processor = EpngImageProcessor(size=SIZE, do_normalize=False, do_rescale=False)
    smooth = np.asarray(Image.fromarray(random_image(60, 80)).resize((20, 15)).resize((80, 60)))
    ours = processor(Image.fromarray(smooth), return_tensors="pt")["pixel_values"][0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(smooth).resize((96, 64), Image.BICUBIC), dtype=np.float32)
    assert np.abs(ours - pil).max() <= 1.5


@pytest.mark.parametrize("resample", [Image.BICUBIC, Image.BILINEAR, Image.NEAREST])
@pytest.mark.parametrize("image_size", [(64, 96), (30, 50), (150, 97)])
@pytest.mark.parametrize("form", ["pil", "hwc", "chw", "gray"])
def test_pixel_values_equal_the_plain_formula_bit_for_bit(resample, image_size, form):
    """Whatever the memory layout it resizes in, and with the resize skipped where the image has the model size
    already, the pixel values are those of resize → clamp → `(x / 255 - mean) / std` in float32 on the plain
    (channels-last) decoded image."""
    array = random_image(*image_size, seed=sum(image_size))
    if form == "gray":
        array = array[..., 0]
    image = array
    if form in ("pil", "gray"):
        image = Image.fromarray(array)
    elif form == "chw":
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    processor = EpngImageProcessor(size=SIZE, resample=resample)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"][0]

    plain = torch.from_numpy(np.asarray(array, dtype=np.float32))
    plain = (plain[..., None].expand(-1, -1, 3) if form == "gray" else plain).permute(2, 0, 1)
    mode = {Image.BICUBIC: "bicubic", Image.BILINEAR: "bilinear", Image.NEAREST: "nearest-exact"}[resample]
    options = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
    resized = F.interpolate(plain[None], size=(SIZE["height"], SIZE["width"]), mode=mode, **options)[0]
    resized = resized.clamp(0.0, 255.0) if mode == "bicubic" else resized
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (EPNG_IMAGE_MEAN, EPNG_IMAGE_STD))
    expected = (resized * (1 / 255) - mean) / std
    assert pixel_values.is_contiguous() and pixel_values.dtype == torch.float32
    assert torch.equal(pixel_values, expected)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"do_rescale": False},
        {"do_normalize": False},
        {"do_rescale": False, "do_normalize": False},
        {"image_mean": (0.5, 0.25, 0.125), "image_std": (0.2, 0.3, 0.7), "rescale_factor": 1 / 127.5},
        {"do_resize": False},
    ],
    ids=["defaults", "no-rescale", "no-normalize", "neither", "other-scaling", "no-resize"],
)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_level_lookup_of_8_bit_images_equals_the_arithmetic_bit_for_bit(settings, mode, monkeypatch):
    """An 8-bit image at the model size, rescaled and normalised by looking its levels up in a table (numba, installed
    by the test environment), gives the values that the arithmetic on the cast image gives."""
    import modeling_epng.image_processing_epng as image_processing

    image = Image.fromarray(random_image(64, 96, seed=3)).convert(mode)
    processor = EpngImageProcessor(size=SIZE, **settings)
    assert image_processing.compiled_pixel_lookup() is not None
    looked_up = processor(image, return_tensors="pt")["pixel_values"]
    monkeypatch.setattr(image_processing, "compiled_pixel_lookup", lambda: None)
    computed = processor(image, return_tensors="pt")["pixel_values"]
    assert looked_up.is_contiguous() and looked_up.dtype == torch.float32
    assert torch.equal(looked_up, computed)


def test_pixel_lookup_is_left_out_where_numba_is_missing_or_cannot_compile(monkeypatch):
    """Without numba the arithmetic runs, silently; with a numba that fails to compile, it runs after a warning that
    says so, and gives the same values."""
    import sys

    import modeling_epng.image_processing_epng as image_processing
    import modeling_epng.pixel_lookup as pixel_lookup

    image = Image.fromarray(random_image(64, 96, seed=4))
    expected = EpngImageProcessor(size=SIZE)(image, return_tensors="pt")["pixel_values"]
    compile_anew = pixel_lookup.compiled_pixel_lookup.__wrapped__  # not the cached kernel
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    assert compile_anew() is None

    class FailingNumba:
        @staticmethod
        def njit(*args, **kwargs):
            raise RuntimeError("no LLVM target")

    monkeypatch.setitem(sys.modules, "numba", FailingNumba)
    monkeypatch.setattr(image_processing, "compiled_pixel_lookup", compile_anew)
    with pytest.warns(RuntimeWarning, match="numba could not compile the pixel lookup"):
        pixel_values = EpngImageProcessor(size=SIZE)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values, expected)


@pytest.mark.parametrize("height, width", [(65, 64), (64, 100), (0, 64)])
def test_size_must_be_multiple_of_32(height, width):
    with pytest.raises(ValueError, match="multiples of 32"):
        EpngImageProcessor(size={"height": height, "width": width})


def test_per_call_size_is_validated_and_used(image_processor):
    image = Image.fromarray(random_image())
    pixel_values = image_processor(image, size={"height": 32, "width": 64}, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 64)
    with pytest.raises(ValueError, match="multiples of 32"):
        image_processor(image, size={"height": 48, "width": 64})


def test_without_resize_sides_must_be_multiples_of_32(image_processor):
    outputs = image_processor(random_image(32, 64), do_resize=False, return_tensors="pt")
    assert outputs["pixel_values"].shape == (1, 3, 32, 64)
    with pytest.raises(
        ValueError, match=r"Without resizing, image sides must be positive multiples of 32 .*, got 30x64"
    ):
        image_processor(random_image(30, 64), do_resize=False)
    with pytest.raises(ValueError, match="different sizes"):
        image_processor([random_image(32, 64), random_image(64, 64)], do_resize=False, return_tensors="pt")


def test_unsupported_resample_raises(image_processor):
    with pytest.raises(ValueError, match="Unsupported resample"):
        image_processor(Image.fromarray(random_image()), resample=Image.Resampling.LANCZOS)


def test_pil_numpy_and_tensor_inputs_agree(image_processor):
    array = random_image()
    reference = image_processor(Image.fromarray(array), return_tensors="pt")["pixel_values"]
    tensor_chw = torch.from_numpy(array).permute(2, 0, 1)
    for image in (array, tensor_chw, torch.from_numpy(array)):
        torch.testing.assert_close(image_processor(image, return_tensors="pt")["pixel_values"], reference)
    batch = image_processor(torch.stack([tensor_chw, tensor_chw]), return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 64, 96)
    assert batch["original_sizes"] == [(30, 50), (30, 50)]


def test_ambiguous_layout_follows_input_data_format(image_processor):
    array = random_image(3, 3)  # 3x3x3: the channel axis cannot be inferred
    as_numpy = image_processor(array, return_tensors="pt")["pixel_values"]  # NumPy default: channels last
    as_tensor = image_processor(torch.from_numpy(array), input_data_format="channels_last", return_tensors="pt")
    torch.testing.assert_close(as_tensor["pixel_values"], as_numpy)
    channels_first = image_processor(torch.from_numpy(array), return_tensors="pt")["pixel_values"]
    assert not torch.allclose(channels_first, as_numpy)


def test_return_tensors_none_gives_lists_and_np_gives_arrays(image_processor):
    images = [random_image(seed=1), random_image(20, 20, seed=2)]
    as_lists = image_processor(images)
    assert isinstance(as_lists["pixel_values"], list) and as_lists["pixel_values"][1].shape == (3, 64, 96)
    assert isinstance(image_processor(images, return_tensors="np")["pixel_values"], np.ndarray)


def test_grayscale_rgba_palette_become_rgb(image_processor):
    rgb = random_image()
    gray = rgb[..., 0]
    from_gray = image_processor(Image.fromarray(gray, mode="L"), return_tensors="pt")["pixel_values"]
    expected_gray = image_processor(np.repeat(gray[..., None], 3, axis=-1), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_gray, expected_gray)

    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=-1)
    reference = image_processor(rgb, return_tensors="pt")["pixel_values"]
    from_rgba = image_processor(Image.fromarray(rgba, mode="RGBA"), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_rgba, reference)
    torch.testing.assert_close(image_processor(rgba, return_tensors="pt")["pixel_values"], reference)

    palette_image = Image.fromarray(rgb).quantize(colors=16)
    expected_palette = image_processor(np.asarray(palette_image.convert("RGB")), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(image_processor(palette_image, return_tensors="pt")["pixel_values"], expected_palette)


def test_sixteen_bit_image_is_scaled_not_clipped(image_processor):
    levels = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16).repeat(8, axis=0).repeat(8, axis=1)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    expected = image_processor(np.repeat((levels // 257).astype(np.uint8)[..., None], 3, -1), return_tensors="pt")
    torch.testing.assert_close(image_processor(image, return_tensors="pt")["pixel_values"], expected["pixel_values"])
    torch.testing.assert_close(image_processor(levels, return_tensors="pt")["pixel_values"], expected["pixel_values"])


def test_exif_orientation_is_applied(image_processor):
    array = random_image(20, 40)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif.tobytes())
    rotated = Image.open(buffer)
    outputs = image_processor(rotated, return_tensors="pt")
    assert outputs["original_sizes"] == [(40, 20)]
    upright = np.rot90(array, k=-1).copy()  # 90 degrees clockwise
    torch.testing.assert_close(outputs["pixel_values"], image_processor(upright, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize(
    "bad_image, error",
    [
        (np.zeros((10, 10, 2), np.uint8), ValueError),
        (np.zeros((1, 1, 10, 10, 3), np.uint8), ValueError),
        (np.zeros((10, 10, 3), bool), ValueError),
        (np.zeros((10, 10, 7), np.uint8), ValueError),
        ("image.png", TypeError),
    ],
)
def test_bad_images_raise(image_processor, bad_image, error):
    with pytest.raises(error):
        image_processor(bad_image)


def make_panoptic_map(height=32, width=48):
    """Left half THREE_BYTE_ID, top-right quarter OTHER_ID, bottom-right unlabelled (0)."""
    id_map = np.zeros((height, width), np.int64)
    id_map[:, : width // 2] = THREE_BYTE_ID
    id_map[: height // 2, width // 2 :] = OTHER_ID
    return id_map


def test_decode_panoptic_map_forms_agree():
    id_map = make_panoptic_map()
    rgb = encode_ids(id_map)
    assert tuple(rgb[0, 0]) == (0x9A, 0x39, 0x31)
    for form in (Image.fromarray(rgb), rgb, torch.from_numpy(rgb), id_map, id_map.astype(np.int32)):
        np.testing.assert_array_equal(decode_panoptic_map(form), id_map)
    with pytest.raises(ValueError, match="panoptic map"):
        decode_panoptic_map(id_map.astype(np.float32))


def test_mask_labels_single_and_plural(image_processor):
    id_map = make_panoptic_map()
    outputs = image_processor(
        Image.fromarray(random_image(32, 48)),
        panoptic_maps=Image.fromarray(encode_ids(id_map)),
        phrase_segment_ids=[[[THREE_BYTE_ID], [THREE_BYTE_ID, OTHER_ID]]],
        return_tensors="pt",
    )
    (mask_labels,) = outputs["mask_labels"]
    assert mask_labels.shape == (2, 64, 96) and mask_labels.dtype == torch.bool
    assert set(mask_labels.unique().tolist()) == {0.0, 1.0}
    singular, plural = mask_labels
    assert singular[:, :48].all() and not singular[:, 48:].any()
    assert plural[:, :48].all() and plural[:32, 48:].all() and not plural[32:, 48:].any()


def test_id_map_resize_equals_mask_resize_except_at_boundaries():
    rng = np.random.default_rng(3)
    id_map = rng.integers(1, 5, (6, 9)).repeat(11, axis=0).repeat(7, axis=1)  # blocky 66x63 map
    resized = resize_id_map(id_map, 32, 64)
    for segment_id in range(1, 5):
        mask = torch.from_numpy(id_map == segment_id).float()[None, None]
        bilinear = F.interpolate(mask, size=(32, 64), mode="bilinear", align_corners=False)[0, 0] >= 0.5
        disagree = np.argwhere(bilinear.numpy() != (resized == segment_id))
        for row, column in disagree:
            window = resized[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2]
            assert len(np.unique(window)) > 1, f"disagreement at ({row}, {column}) is not on a boundary"
        assert len(disagree) < 0.1 * 32 * 64


def test_unknown_segment_id_raises_naming_it(image_processor):
    panoptic_map = encode_ids(make_panoptic_map())
    with pytest.raises(ValueError, match="12345"):
        image_processor.phrase_masks(panoptic_map, [[THREE_BYTE_ID], [12345]])
    with pytest.raises(ValueError, match=str(OTHER_ID)):
        image_processor.phrase_masks(panoptic_map, [[OTHER_ID]], known_segment_ids=[THREE_BYTE_ID])
    # An id that is known (e.g. listed in segments_info) but absent from the map gives an empty mask.
    masks = image_processor.phrase_masks(panoptic_map, [[99]], known_segment_ids=[99, THREE_BYTE_ID])
    assert masks.dtype == torch.bool and masks.shape == (1, 32, 48) and not masks.any()


def test_mismatched_targets_raise(image_processor):
    image = random_image(32, 48)
    panoptic_map = encode_ids(make_panoptic_map())
    with pytest.raises(ValueError, match="panoptic maps"):
        image_processor([image, image], panoptic_maps=[panoptic_map], phrase_segment_ids=[[[OTHER_ID]], [[OTHER_ID]]])
    with pytest.raises(ValueError, match="both"):
        image_processor(image, panoptic_maps=panoptic_map)


def test_save_and_load_round_trip(tmp_path, image_processor):
    image_processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    reloaded = EpngImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == image_processor.to_dict()
    image = random_image()
    expected = image_processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(reloaded(image, return_tensors="pt")["pixel_values"], expected)
