"""Tests of the refer-format reader and the 🤗 dataset converter on a tiny RefCOCO-like fixture written here:
two JPEG images, masks given as polygons, uncompressed RLE and compressed RLE, several sentences and splits."""

import json
import os
import pickle
import shutil
import sys
import types

import datasets
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from processing.refer_dataset import convert_refer_to_hf, main
from processing.refer_format import ReferPickleError, ReferReader, decode_segmentation, load_refs

IMAGE_SIZES = {1: (8, 10), 2: (6, 12)}  # image_id → (height, width)


def rectangle(image_id, top, left, bottom, right):
    """Expected mask of a rectangle polygon with integer corners: rows top..bottom-1, columns left..right-1."""
    mask = np.zeros(IMAGE_SIZES[image_id], dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    pixels = mask.flatten(order="F")
    change_points = np.flatnonzero(np.diff(pixels.astype(int))) + 1
    runs = np.diff(np.concatenate([[0], change_points, [pixels.size]])).tolist()
    return {"size": list(mask.shape), "counts": runs if not pixels[0] else [0, *runs]}


# Expected masks of the four annotations, one per segmentation format.
DIAGONAL = np.eye(6, 12, dtype=bool) | np.eye(6, 12, k=3, dtype=bool)
EXPECTED_MASKS = {
    101: rectangle(1, 1, 2, 4, 6),  # polygon
    102: np.pad(np.ones((3, 2), dtype=bool), ((4, 1), (7, 1))),  # uncompressed RLE (8 x 10)
    201: DIAGONAL,  # compressed RLE
    202: rectangle(2, 0, 0, 2, 3) | rectangle(2, 3, 8, 6, 12),  # two polygons (+ a degenerate one)
}


def write_refer_fixture(root):
    """Write ROOT/refcoco/{refs(unc).p, instances.json} and ROOT/images/train2014/*.jpg; return the refs."""
    images = []
    for image_id, (height, width) in IMAGE_SIZES.items():
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        (root / "images" / "train2014").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (40 * image_id, 90, 200)).save(root / "images" / "train2014" / file_name)
    compressed = coco_mask.encode(np.asfortranarray(DIAGONAL.astype(np.uint8)))
    annotations = [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
        {
            "id": 102,
            "image_id": 1,
            "category_id": 18,
            "iscrowd": 1,
            "segmentation": uncompressed_rle(EXPECTED_MASKS[102]),
        },
        {
            "id": 201,
            "image_id": 2,
            "category_id": 3,
            "iscrowd": 1,
            "segmentation": {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")},
        },
        {
            "id": 202,
            "image_id": 2,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[0, 0, 3, 0, 3, 2, 0, 2], [8, 3, 12, 3, 12, 6, 8, 6], [1, 1, 2, 2]],
        },
    ]
    (root / "refcoco").mkdir(parents=True)
    with (root / "refcoco" / "instances.json").open("w") as file:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}, file)

    def ref(ref_id, ann_id, image_id, split, sentences):
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "split": split,
            "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # refer names the annotation, not the image
            "sentences": [
                {"sent": sent, "tokens": sent.split(), "sent_id": 10 * ref_id + i} for i, sent in enumerate(sentences)
            ],
        }

    refs = [
        ref(1, 101, 1, "testA", ["man on the left", "guy in red"]),
        ref(2, 102, 1, "val", ["the dog"]),
        ref(3, 201, 2, "testB", ["diagonal thing", "the stripes", "lines"]),
        ref(4, 202, 2, "testA", ["two boxes"]),
    ]
    with (root / "refcoco" / "refs(unc).p").open("wb") as file:
        pickle.dump(refs, file)
    return refs


@pytest.fixture
def refer_root(tmp_path):
    root = tmp_path / "refer"
    write_refer_fixture(root)
    return root


def test_reader_yields_one_example_per_sentence_with_the_right_masks(refer_root):
    reader = ReferReader(refer_root, "refcoco")
    assert reader.split_by == "unc" and reader.valid_splits == ("train", "val", "testA", "testB")
    assert reader.evaluation_splits == ("val", "testA", "testB")
    examples = list(reader.examples())
    assert [e["split"] for e in examples] == ["val", "testA", "testA", "testA", "testB", "testB", "testB"]
    assert [e["sent_id"] for e in examples] == [20, 10, 11, 40, 30, 31, 32]
    for example in examples:
        np.testing.assert_array_equal(example["mask"], EXPECTED_MASKS[example["ann_id"]])
        assert example["mask"].shape == (example["height"], example["width"]) == IMAGE_SIZES[example["image_id"]]
        assert example["image"].endswith(f"images/train2014/COCO_train2014_{example['image_id']:012d}.jpg")
    assert examples[1]["sentence"] == "man on the left" and examples[1]["ref_id"] == 1
    assert reader.num_examples("testB") == 3 and reader.num_examples("train") == 0


def test_decode_segmentation_formats():
    np.testing.assert_array_equal(decode_segmentation([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 10), EXPECTED_MASKS[101])
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(DIAGONAL), 6, 12), DIAGONAL)
    compressed = coco_mask.encode(np.asfortranarray(DIAGONAL.astype(np.uint8)))  # bytes counts
    np.testing.assert_array_equal(decode_segmentation(compressed, 6, 12), DIAGONAL)
    assert not decode_segmentation([[1, 1, 2, 2]], 6, 12).any()  # degenerate polygon only: empty mask
    with pytest.raises(ValueError, match="size"):
        decode_segmentation(uncompressed_rle(DIAGONAL), 12, 6)
    with pytest.raises(ValueError, match="unsupported"):
        decode_segmentation("not a mask", 6, 12)


def test_reader_split_filtering_and_errors(refer_root, tmp_path):
    reader = ReferReader(refer_root, "refcoco", images_dir=refer_root / "images" / "train2014")
    assert {e["ref_id"] for e in reader.examples("testA")} == {1, 4}
    assert [e["split"] for e in reader.examples(["testB", "val"])] == ["testB"] * 3 + ["val"]
    with pytest.raises(ValueError, match="valid: train, val, testA, testB"):
        list(reader.examples("test"))
    with pytest.raises(ValueError, match="refcoco, refcoco\\+, refcocog"):
        ReferReader(refer_root, "refclef")
    with pytest.raises(ValueError, match="valid: umd, google"):
        ReferReader(refer_root, "refcocog", split_by="unc")
    with pytest.raises(FileNotFoundError, match=r"refcocog/refs\(umd\)\.p"):
        ReferReader(refer_root, "refcocog")
    with pytest.raises(FileNotFoundError, match="elsewhere/COCO_train2014_000000000001.jpg"):
        next(ReferReader(refer_root, "refcoco", images_dir=tmp_path / "elsewhere").examples("testA"))


def test_converter_round_trip_through_load_dataset(refer_root, tmp_path):
    output = tmp_path / "out" / "refcoco_hf"
    convert_refer_to_hf(refer_root, "refcoco", output, rows_per_shard=2)
    assert sorted(p.name for p in (output / "data").iterdir()) == [
        "testA-00000-of-00002.parquet",
        "testA-00001-of-00002.parquet",
        "testB-00000-of-00002.parquet",
        "testB-00001-of-00002.parquet",
        "val-00000-of-00001.parquet",
    ]
    assert "config_name: default" in (output / "README.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o777 & ~umask  # not the private mode of the staging folder

    loaded = datasets.load_dataset(str(output), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["val", "testA", "testB"]
    assert [loaded[s].num_rows for s in loaded] == [1, 3, 3]
    reader_examples = {e["sent_id"]: e for e in ReferReader(refer_root, "refcoco").examples()}
    for split in loaded:
        for row in loaded[split]:
            expected = reader_examples[row["sent_id"]]
            assert expected["split"] == split
            for key in ("sentence", "image_id", "ann_id", "ref_id", "width", "height", "file_name"):
                assert row[key] == expected[key]
            np.testing.assert_array_equal(np.asarray(row["mask"]), expected["mask"])
            assert row["image"].size == (expected["width"], expected["height"]) and row["image"].mode == "RGB"


def test_converter_leaves_no_partial_output(refer_root, tmp_path):
    output = tmp_path / "out" / "refcoco_hf"
    with pytest.raises(ValueError, match="no refs"):  # the fixture has no train refs
        convert_refer_to_hf(refer_root, "refcoco", output, splits=["val", "train"])
    (refer_root / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()  # needed by testB only
    with pytest.raises(FileNotFoundError, match="COCO_train2014_000000000002.jpg"):
        convert_refer_to_hf(refer_root, "refcoco", output, splits=["val", "testB"])
    assert list((tmp_path / "out").iterdir()) == []  # neither the output nor a staging folder is left

    convert_refer_to_hf(refer_root, "refcoco", output, splits=["val"])
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_refer_to_hf(refer_root, "refcoco", output, splits=["val"])


def test_cli_converts_the_requested_splits(refer_root, tmp_path, capsys):
    output = tmp_path / "cli_out"
    common = [
        "--refer_root",
        str(refer_root),
        "--dataset_name",
        "refcoco",
        "--output_dir",
        str(output),
        "--images_dir",
        str(refer_root / "images" / "train2014"),
    ]
    main([*common, "--splits", "testA"])
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in (output / "data").iterdir()) == ["testA-00000-of-00001.parquet"]
    main([*common, "--splits", "val", "--overwrite"])
    assert sorted(p.name for p in (output / "data").iterdir()) == ["val-00000-of-00001.parquet"]


def test_converter_refuses_an_output_overlapping_its_sources(refer_root, tmp_path):
    images_dir = refer_root / "images" / "train2014"
    before = sorted(images_dir.iterdir())
    for output in (refer_root, refer_root / "refcoco_hf", images_dir):
        with pytest.raises(ValueError, match="the source"):
            convert_refer_to_hf(refer_root, "refcoco", output, splits=["val"], overwrite=True)
    outside_images = shutil.copytree(images_dir, tmp_path / "coco")
    with pytest.raises(ValueError, match="contains the source"):
        convert_refer_to_hf(refer_root, "refcoco", tmp_path, images_dir=outside_images, overwrite=True)
    assert sorted(images_dir.iterdir()) == before and outside_images.is_dir()


@pytest.fixture
def probe(monkeypatch):
    """A module whose `record` stands in for `os.system` in malicious pickles: calling it only records the call."""
    module = types.ModuleType("refer_pickle_probe")
    module.calls = []

    def record(*args):
        module.calls.append(args)
        return "ran"

    record.__module__, record.__qualname__ = module.__name__, "record"  # where pickle finds it
    module.record = record
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


class Reduces:
    """Pickles as a call of `function(*args)`: what a malicious pickle runs when it is loaded."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def write_refs(refer_root, refs):
    with (refer_root / "refcoco" / "refs(unc).p").open("wb") as file:
        pickle.dump(refs, file)
    return refer_root / "refcoco" / "refs(unc).p"


def test_refs_of_plain_values_load_with_every_pickle_protocol(tmp_path):
    refs = write_refer_fixture(tmp_path / "refer")
    refs[0]["score"], refs[0]["bbox"], refs[0]["flags"] = 0.5, (1.0, 2.0), [True, None]  # floats, tuples, constants
    path = tmp_path / "refs.p"
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # the refer toolkit's files are protocol 2 (Python 2)
        path.write_bytes(pickle.dumps(refs, protocol=protocol))
        assert load_refs(path) == refs


@pytest.mark.parametrize("payload", ["probe", "eval"])
def test_reader_refuses_a_pickle_that_names_a_global(refer_root, probe, payload):
    function, refused = (probe.record, "refer_pickle_probe.record") if payload == "probe" else (eval, "builtins.eval")
    refs = write_refer_fixture(refer_root.parent / "benign")
    refs[1]["sentences"][0]["sent"] = Reduces(function, "1 + 1")
    path = write_refs(refer_root, refs)
    with pytest.raises(ReferPickleError) as raised:
        ReferReader(refer_root, "refcoco")
    message = str(raised.value)
    assert str(path) in message and refused in message and "can run arbitrary code" in message
    assert "--allow_pickle" in message and isinstance(raised.value, pickle.UnpicklingError)
    assert probe.calls == []  # refused before anything was called


def test_allow_pickle_loads_a_trusted_refs_pickle_with_globals(refer_root):
    refs = write_refer_fixture(refer_root.parent / "benign")
    for ref in refs:  # refs written by a numpy-based tool: ids as numpy integers, which pickle names as globals
        ref["ref_id"], ref["ann_id"] = np.int64(ref["ref_id"]), np.int64(ref["ann_id"])
    write_refs(refer_root, refs)
    with pytest.raises(ReferPickleError, match=r"numpy\.\S+"):
        ReferReader(refer_root, "refcoco")
    reader = ReferReader(refer_root, "refcoco", allow_pickle=True)
    assert [example["ref_id"] for example in reader.examples("testA")] == [1, 1, 4]


def test_converter_and_cli_refuse_a_malicious_pickle_and_write_nothing(refer_root, probe, tmp_path, capsys):
    refs = write_refer_fixture(tmp_path / "benign")
    refs[1]["sentences"][0]["tokens"] = Reduces(probe.record, "echo pwned")
    write_refs(refer_root, refs)
    output = tmp_path / "out" / "refcoco_hf"
    with pytest.raises(ReferPickleError, match=r"refer_pickle_probe\.record"):
        convert_refer_to_hf(refer_root, "refcoco", output)
    argv = ["--refer_root", str(refer_root), "--dataset_name", "refcoco", "--output_dir", str(output)]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "refs(unc).p asks to load the Python global refer_pickle_probe" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists() and probe.calls == []  # no output, staging folder or parent folder

    main([*argv, "--allow_pickle", "--splits", "val"])  # the file's owner vouches for it: the payload runs
    assert probe.calls == [("echo pwned",)] and (output / "data" / "val-00000-of-00001.parquet").is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda refs: {"refs": refs}, "holds a dict, not the list of refs"),
        (lambda refs: [*refs[:1], "ref"], "ref 1 is a str, not a dict"),
        (lambda refs: [{key: value for key, value in ref.items() if key != "ann_id"} for ref in refs], "has no ann_id"),
        (lambda refs: [{**refs[0], "sentences": [{"sent_id": 1}]}], "has no sent"),
    ],
)
def test_reader_names_what_a_malformed_refs_pickle_lacks(refer_root, tmp_path, capsys, damage, message):
    write_refs(refer_root, damage(write_refer_fixture(tmp_path / "benign")))
    with pytest.raises(ValueError, match=message) as raised:
        ReferReader(refer_root, "refcoco")
    assert "refs(unc).p" in str(raised.value)
    output = tmp_path / "out" / "refcoco_hf"
    with pytest.raises(SystemExit) as exited:
        main(["--refer_root", str(refer_root), "--dataset_name", "refcoco", "--output_dir", str(output)])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reader_names_a_truncated_refs_pickle(refer_root, tmp_path):
    path = write_refs(refer_root, write_refer_fixture(tmp_path / "benign"))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p is not a readable pickle \(truncated or corrupt\?\)"):
        ReferReader(refer_root, "refcoco")
