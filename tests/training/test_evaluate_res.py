"""Tests of the zero-shot referring segmentation evaluation (training/evaluate_res.py) on a tiny refer fixture
written here (two images, rectangle polygons, a blank sentence) and a tiny EPNG saved with the MiniLM tokenizer."""

import json
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from modeling_epng import EpngConfig, EpngForPanopticNarrativeGrounding, EpngImageProcessor, EpngProcessor
from processing.refer_dataset import convert_refer_to_hf
from processing.refer_format import ReferReader
from training.evaluate_res import RANDOM_INIT_ROW, ZERO_SHOT_ROW, evaluate_res, random_init_like, run

IMAGE_SIZES = {1: (10, 20), 2: (12, 8)}  # image_id → (height, width): 200 and 96 pixels
# ann_id → (image_id, (left, top, right, bottom)) of a rectangle polygon: rows top..bottom-1, columns left..right-1.
RECTANGLES = {
    101: (1, (0, 0, 7, 10)),  # 70 px: 0.35 of its image
    102: (1, (10, 1, 19, 10)),  # 81 px: 0.405
    201: (2, (0, 0, 8, 6)),  # 48 px: 0.5
}
# (ref_id, ann_id, split, sentences); the sent_id of sentence i of ref r is 10 * r + i.
REFS = [
    (1, 101, "testA", ["man on the left", "guy in red"]),
    (2, 102, "testA", ["the dog", "   "]),  # a blank sentence: nothing to ground
    (3, 201, "testA", ["upper half"]),
    (4, 201, "testB", ["top"]),
]


def write_refer_fixture(root):
    """Write ROOT/refcoco/{refs(unc).p, instances.json} and ROOT/images/train2014/*.png."""
    images_dir = root / "images" / "train2014"
    images_dir.mkdir(parents=True)
    images = []
    for image_id, (height, width) in IMAGE_SIZES.items():
        file_name = f"COCO_train2014_{image_id:012d}.png"
        pixels = np.random.default_rng(image_id).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    annotations = [
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[left, top, right, top, right, bottom, left, bottom]],
        }
        for ann_id, (image_id, (left, top, right, bottom)) in RECTANGLES.items()
    ]
    (root / "refcoco").mkdir()
    instances = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = [
        {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": RECTANGLES[ann_id][0],
            "split": split,
            "category_id": 1,
            "sentences": [
                {"sent": sent, "tokens": sent.split(), "sent_id": 10 * ref_id + index}
                for index, sent in enumerate(sentences)
            ],
        }
        for ref_id, ann_id, split, sentences in REFS
    ]
    with (root / "refcoco" / "refs(unc).p").open("wb") as file:
        pickle.dump(refs, file)


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("refer")
    write_refer_fixture(root)
    return root


@pytest.fixture(scope="module")
def processor(tokenizer):
    return EpngProcessor(image_processor=EpngImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, processor):
    """A tiny EPNG (vocabulary of the MiniLM tokenizer) and its processor, saved together."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    EpngForPanopticNarrativeGrounding(EpngConfig.tiny()).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class ConstantLogitsModel(nn.Module):
    """Stands in for EPNG: the same mask logit for every pixel of every phrase slot."""

    def __init__(self, logit):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(float(logit)))

    def forward(self, pixel_values, phrase_mask, **kwargs):
        batch_size, num_phrases = phrase_mask.shape
        height, width = pixel_values.shape[-2:]
        return SimpleNamespace(mask_logits=self.logit.expand(batch_size, num_phrases, height // 4, width // 4))


def expected_metrics(ious):
    ious = np.asarray(ious)
    return {
        "mean_iou": 100 * ious.mean(),
        "precision@0.3": 100 * (ious >= 0.3).mean(),
        "precision@0.4": 100 * (ious >= 0.4).mean(),
        "precision@0.5": 100 * (ious >= 0.5).mean(),
    }


@pytest.mark.parametrize("as_list", [False, True], ids=["stream", "list"])
def test_whole_image_prediction_scores_the_ground_truth_area_share(refer_root, processor, as_list):
    reader = ReferReader(refer_root, "refcoco")
    examples = reader.examples("testA")
    examples = list(examples) if as_list else examples
    metrics = evaluate_res(ConstantLogitsModel(20.0), processor, examples, batch_size=2)
    # Every grounded sentence predicts the whole image: IoU = gt area / image area. The blank sentence (4th) has
    # no phrase, hence an empty prediction and IoU 0.
    ious = [0.35, 0.35, 0.405, 0.0, 0.5]
    for key, value in expected_metrics(ious).items():
        assert metrics[key] == pytest.approx(value), key
    assert metrics["precision@0.5"] == pytest.approx(20.0)
    overall = (70 + 70 + 81 + 0 + 48) / (200 + 200 + 200 + 81 + 96)  # blank sentence: union = its gt area
    assert metrics["overall_iou"] == pytest.approx(100 * overall)
    assert metrics["num_sentences"] == 5


def test_threshold_decides_the_prediction(refer_root, processor):
    """Logit 0 is probability 0.5: the whole image at threshold 0.3, nothing at 0.6 (IoU 0 everywhere)."""
    examples = list(ReferReader(refer_root, "refcoco").examples("testB"))
    whole_image = evaluate_res(ConstantLogitsModel(0.0), processor, examples, threshold=0.3)
    assert whole_image["mean_iou"] == pytest.approx(50.0)
    nothing = evaluate_res(ConstantLogitsModel(0.0), processor, examples, threshold=0.6)
    assert nothing["mean_iou"] == 0.0 and nothing["precision@0.3"] == 0.0


def check_report(report, num_sentences, rows):
    assert list(report["results"]) == rows
    for metrics in report["results"].values():
        assert metrics["num_sentences"] == num_sentences
        percent_keys = {"mean_iou", "precision@0.3", "precision@0.4", "precision@0.5", "overall_iou"}
        assert set(metrics) == percent_keys | {"num_sentences"}
        assert all(0 <= metrics[key] <= 100 for key in percent_keys)


def test_cli_end_to_end_on_refer_files_and_converted_dataset(refer_root, model_dir, tmp_path, capsys):
    json_path = tmp_path / "res.json"
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--split",
        "testA",
        "--batch_size",
        "3",
        "--output_json",
        str(json_path),
    ]
    rows = run([*argv, "--refer_root", str(refer_root), "--dataset_name", "refcoco"])
    table = capsys.readouterr().out
    assert "refcoco testA (5 sentences, threshold 0.3)" in table
    assert "| Model" in table and "mIoU" in table and "P@0.5" in table and ZERO_SHOT_ROW in table
    assert RANDOM_INIT_ROW not in table
    report = json.loads(json_path.read_text())
    assert report["dataset"] == "refcoco" and report["split_by"] == "unc" and report["image_size"] == [64, 64]
    check_report(report, 5, [ZERO_SHOT_ROW])

    # The converted 🤗 dataset gives the same sentences, masks and images, hence the same numbers.
    dataset_dir = convert_refer_to_hf(refer_root, "refcoco", tmp_path / "refcoco_hf", splits=["testA", "testB"])
    rows_from_dataset = run([*argv, "--dataset_dir", str(dataset_dir)])
    assert rows_from_dataset[ZERO_SHOT_ROW] == pytest.approx(rows[ZERO_SHOT_ROW])
    check_report(json.loads(json_path.read_text()), 5, [ZERO_SHOT_ROW])


def test_cli_random_init_row_and_max_samples(refer_root, model_dir, tmp_path, capsys):
    json_path = tmp_path / "res.json"
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--refer_root",
        str(refer_root),
        "--dataset_name",
        "refcoco",
        "--split",
        "testA",
    ]
    run([*argv, "--random_init_row", "--max_samples", "3", "--image_size", "32", "--output_json", str(json_path)])
    table = capsys.readouterr().out
    assert ZERO_SHOT_ROW in table and RANDOM_INIT_ROW in table
    report = json.loads(json_path.read_text())
    assert report["image_size"] == [32, 32]
    check_report(report, 3, [ZERO_SHOT_ROW, RANDOM_INIT_ROW])


def test_random_init_keeps_only_the_text_encoder(model_dir):
    model = EpngForPanopticNarrativeGrounding.from_pretrained(model_dir)
    random_model = random_init_like(model, seed=1)
    trained, fresh = model.state_dict(), random_model.state_dict()
    text_keys = [key for key in trained if key.startswith("phrase_encoder.text_encoder.")]
    assert text_keys and all(torch.equal(trained[key], fresh[key]) for key in text_keys)
    projection = "phrase_encoder.text_projection.weight"
    assert not torch.equal(trained[projection], fresh[projection])


@pytest.mark.parametrize(
    "extra_argv, message",
    [
        (["--dataset_name", "refcoco", "--split", "test"], "valid: train, val, testA, testB"),
        (["--dataset_name", "refclef", "--split", "testA"], "unknown refer dataset"),
        (["--split", "testA"], "--dataset_name is required"),
        (["--dataset_name", "refcoco", "--split", "train"], "has no sentences"),
        (["--dataset_name", "refcoco", "--split", "testA", "--image_size", "50"], "multiples of 32"),
    ],
)
def test_cli_argument_errors(refer_root, model_dir, capsys, extra_argv, message):
    with pytest.raises(SystemExit):
        run(["--model_name_or_path", str(model_dir), "--refer_root", str(refer_root), *extra_argv])
    assert message in capsys.readouterr().err


def test_cli_model_errors(refer_root, model_dir, tmp_path, capsys):
    data_argv = ["--refer_root", str(refer_root), "--dataset_name", "refcoco", "--split", "testA"]
    with pytest.raises(SystemExit):
        run(["--model_name_or_path", str(tmp_path / "missing"), *data_argv])
    assert "model folder not found" in capsys.readouterr().err

    model_only = tmp_path / "model_only"
    EpngForPanopticNarrativeGrounding.from_pretrained(model_dir).save_pretrained(model_only)
    with pytest.raises(SystemExit):
        run(["--model_name_or_path", str(model_only), *data_argv])
    assert "no EPNG processor files" in capsys.readouterr().err


def test_cli_refuses_refs_naming_globals_unless_allow_pickle(refer_root, model_dir, tmp_path, capsys):
    trusted_root = shutil.copytree(refer_root, tmp_path / "refer")
    refs = ReferReader(refer_root, "refcoco").refs
    for ref in refs:  # ids as numpy integers: pickle names numpy globals for them
        ref["ref_id"] = np.int64(ref["ref_id"])
    with (trusted_root / "refcoco" / "refs(unc).p").open("wb") as file:
        pickle.dump(refs, file)
    argv = ["--model_name_or_path", str(model_dir), "--refer_root", str(trusted_root), "--dataset_name", "refcoco"]
    argv += ["--split", "testA", "--max_samples", "2"]
    with pytest.raises(SystemExit):
        run(argv)
    error = capsys.readouterr().err
    assert "refs(unc).p asks to load the Python global numpy." in error and "--allow_pickle" in error
    assert run([*argv, "--allow_pickle"])[ZERO_SHOT_ROW]["num_sentences"] == 2
