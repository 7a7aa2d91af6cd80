"""Tests of the converter: round trip through `datasets.load_dataset`, bad data, atomic output, CLI."""

import json
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from processing import png_dataset, synthetic
from processing.png_dataset import convert, dataset_card
from processing.png_errors import PngFormatError


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("png"), num_train=14, num_val=6, seed=1)


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted") / "dataset"
    summary = convert(source, output, shard_size=6, progress=False)
    return output, summary


@pytest.fixture
def root(source, tmp_path):
    """A private copy of the benchmark that a test may damage."""
    return shutil.copytree(source, tmp_path / "root")


def _front_matter(readme):
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_round_trip_through_load_dataset(converted, source, tmp_path):
    output, summary = converted
    dataset = datasets.load_dataset(str(output), cache_dir=str(tmp_path / "cache"))
    assert set(dataset) == {"train", "validation"}
    assert (dataset["train"].num_rows, dataset["validation"].num_rows) == (14, 6)
    assert isinstance(dataset["train"].features["image"], datasets.Image)
    assert isinstance(dataset["train"].features["panoptic_map"], datasets.Image)
    assert dataset["train"].features["phrases"].feature["segment_ids"] == datasets.List(datasets.Value("int64"))

    categories = json.loads((source / "annotations" / "panoptic_train2017.json").read_text())["categories"]
    category_is_thing = {c["id"]: bool(c["isthing"]) for c in categories}
    num_plural = 0
    for example in dataset["train"]:
        image, panoptic = np.asarray(example["image"]), np.asarray(example["panoptic_map"]).astype(np.int64)
        assert image.shape == (example["height"], example["width"], 3) == panoptic.shape
        assert example["width"] != example["height"]
        ids = panoptic[..., 0] + 256 * panoptic[..., 1] + 256**2 * panoptic[..., 2]
        segments = {s["id"]: s for s in example["segments_info"]}
        for segment in segments.values():
            assert segment["is_thing"] == category_is_thing[segment["category_id"]]
        for phrase in example["phrases"]:
            assert example["caption"][phrase["start"] : phrase["end"]] == phrase["text"]
            assert phrase["is_thing"] == all(segments[i]["is_thing"] for i in phrase["segment_ids"])
            mask = np.isin(ids, phrase["segment_ids"])
            # the phrase mask is the union of its segments: its area is the sum of theirs, each one present
            assert mask.sum() == sum(segments[i]["area"] for i in phrase["segment_ids"])
            assert all((ids == i).any() for i in phrase["segment_ids"])
            if phrase["is_plural"]:
                num_plural += 1
                assert len(phrase["segment_ids"]) >= 2
                assert mask.sum() > max(segments[i]["area"] for i in phrase["segment_ids"])
    assert num_plural == summary.splits["train"].num_plural_phrases > 0


def test_shards_card_and_summary(converted):
    output, summary = converted
    shards = sorted(p.name for p in (output / "data").iterdir())
    assert shards == [f"train-0000{i}-of-00003.parquet" for i in range(3)] + ["validation-00000-of-00001.parquet"]
    assert sum(pq.ParquetFile(output / "data" / name).metadata.num_rows for name in shards[:3]) == 14
    metadata, text = _front_matter(output / "README.md")
    data_files = {f["split"]: f["path"] for f in metadata["configs"][0]["data_files"]}
    assert data_files == {"train": "data/train-*", "validation": "data/validation-*"}
    splits = {s["name"]: s["num_examples"] for s in metadata["dataset_info"]["splits"]}
    assert splits == {"train": 14, "validation": 6}
    assert [f["name"] for f in metadata["dataset_info"]["features"]][:3] == ["image", "image_id", "narrative_index"]
    train = summary.splits["train"]
    assert train.num_thing_phrases + train.num_stuff_phrases == train.num_phrases > 0
    assert f"| train | train2017 | 14 | {train.num_images} | {train.num_phrases} |" in text
    assert "Panoptic Narrative Grounding" in text and "Gonz" in text and "ICCV" in text
    assert "@inproceedings" in text
    assert dataset_card(summary) == text  # the public card function is what the converter wrote


def test_two_processes_give_the_same_rows(converted, source, tmp_path):
    output, _ = converted
    summary = convert(source, tmp_path / "parallel", num_proc=2, progress=False)

    def rows(folder, split):
        table = pq.read_table(sorted((folder / "data").glob(f"{split}-*")), columns=["image_id", "caption", "phrases"])
        return table.to_pylist()

    for split in ("train", "validation"):
        assert rows(tmp_path / "parallel", split) == rows(output, split)
    assert summary.splits["train"].num_shards == 2


def _damage_image(root):
    (root / "images" / "train2017" / "000000000001.jpg").write_bytes(b"not a jpeg" * 50)


def _delete_image(root):
    (root / "images" / "train2017" / "000000000001.jpg").unlink()


def _delete_png(root):
    (root / "annotations" / "panoptic_segmentation" / "train2017" / "000000000001.png").unlink()


def _edit_first_narrative(edit):
    def damage(root):
        path = root / "annotations" / "png_coco_train2017.json"
        narratives = json.loads(path.read_text())
        edit(narratives[0])
        path.write_text(json.dumps(narratives))

    return damage


def _unknown_segment(narrative):
    next(s for s in narrative["segments"] if s["segment_ids"])["segment_ids"] = ["1"]


def _mismatch(narrative):
    narrative["caption"] = narrative["caption"].replace("In this", "On that", 1)


def _no_grounded_phrase(narrative):
    for segment in narrative["segments"]:
        segment["segment_ids"] = []


@pytest.mark.parametrize(
    "damage, reason, named",
    [
        (_delete_image, "missing_image", "000000000001.jpg"),
        (_delete_png, "missing_panoptic_png", "000000000001.png"),
        (_edit_first_narrative(_unknown_segment), "unknown_segment_id", "png_coco_train2017.json"),
        (_edit_first_narrative(_mismatch), "utterance_mismatch", "png_coco_train2017.json"),
        (_damage_image, "corrupt_image", "000000000001.jpg"),
        (_edit_first_narrative(_no_grounded_phrase), "no_grounded_phrase", "png_coco_train2017.json"),
    ],
)
def test_bad_data_is_skipped_by_default_and_fatal_in_strict_mode(root, tmp_path, damage, reason, named):
    damage(root)
    narratives = json.loads((root / "annotations" / "png_coco_train2017.json").read_text())
    file_level = reason in ("missing_image", "missing_panoptic_png", "corrupt_image")
    expected_skips = sum(n["image_id"] == "1" for n in narratives) if file_level else 1

    summary = convert(root, tmp_path / "lenient", progress=False)
    train = summary.splits["train"]
    assert train.skipped.counts == {reason: expected_skips}
    assert train.num_narratives == 14 - expected_skips
    assert named in train.skipped.examples[reason][0]
    assert f"| `{reason}` |" in (tmp_path / "lenient" / "README.md").read_text()

    if reason == "no_grounded_phrase":  # not bad data: strict mode converts too
        assert convert(root, tmp_path / "strict", strict=True, progress=False).splits["train"].num_narratives == 13
        return
    with pytest.raises(PngFormatError) as raised:
        convert(root, tmp_path / "strict", strict=True, progress=False)
    assert raised.value.reason == reason
    assert named in str(raised.value) and "narrative 0 of image '1'" in str(raised.value)
    assert not (tmp_path / "strict").exists() and not _leftovers(tmp_path, "strict")


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing(source, tmp_path, monkeypatch, error):
    monkeypatch.setattr(png_dataset, "WRITE_BATCH_SIZE", 2)
    calls = []
    original = pq.ParquetWriter.write_table

    def failing_write_table(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", failing_write_table)
    with pytest.raises(type(error)):
        convert(source, tmp_path / "out", progress=False)
    assert len(calls) == 3
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path, "out")


def test_existing_output_needs_overwrite(source, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("previous content")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(source, output, progress=False)
    assert (output / "old.txt").exists()
    convert(source, output, splits=["val2017"], overwrite=True, progress=False)
    assert not (output / "old.txt").exists()
    assert sorted(p.name for p in (output / "data").iterdir()) == ["validation-00000-of-00001.parquet"]
    assert not _leftovers(tmp_path, "out")


def test_cli(source, tmp_path, capsys):
    result = subprocess.run(
        [sys.executable, "-m", "processing.png_dataset", "--root", str(source), "--output_dir", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "train (train2017): 14 narratives" in result.stdout
    assert (tmp_path / "cli" / "README.md").is_file()
    # an error exits non-zero with a message (in process: a second interpreter start is not needed for this)
    bad_root = shutil.copytree(source, tmp_path / "bad")
    _delete_png(bad_root)
    argv = ["--root", str(bad_root), "--output_dir", str(tmp_path / "strict"), "--strict"]
    assert png_dataset.main(argv) == 1
    message = capsys.readouterr().err
    assert "error (strict mode)" in message and "000000000001.png" in message
    assert not (tmp_path / "strict").exists()


def test_parallel_strict_error_reaches_the_caller(root, tmp_path):
    _delete_png(root)
    with pytest.raises(PngFormatError, match="000000000001.png") as raised:
        convert(root, tmp_path / "out", num_proc=2, strict=True, progress=False)
    assert raised.value.reason == "missing_panoptic_png" and raised.value.image_id == "1"
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path, "out")


def test_dead_worker_fails_instead_of_hanging(source, tmp_path):
    # Without the `__main__` guard every spawned worker dies while re-importing the script.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from processing.png_dataset import convert\n"
        f"convert({str(source)!r}, {str(tmp_path / 'out')!r}, splits=['val2017'], num_proc=2, progress=False)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "a conversion process died" in result.stderr and "guard" in result.stderr
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path, "out")


def test_output_inside_or_equal_to_the_root_is_refused(root, tmp_path, capsys):
    before = sorted(path.relative_to(root) for path in root.rglob("*"))
    for output in (root, root / "hf", root / "images"):
        with pytest.raises(ValueError, match="the source"):
            convert(root, output, overwrite=True, progress=False)
    assert png_dataset.main(["--root", str(root), "--output_dir", str(root), "--overwrite"]) == 1
    assert "is the source" in capsys.readouterr().err
    assert sorted(path.relative_to(root) for path in root.rglob("*")) == before
