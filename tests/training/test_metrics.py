"""Tests of training/metrics.py: AR against the brute-force reference formula, tables, mask IoU, accumulators,
the `evaluate` module, and the referring segmentation metrics."""

import csv
import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from training.metrics import (
    PNG_AVERAGE_RECALL_PATH,
    PhraseIouAccumulator,
    SentenceIouAccumulator,
    average_recall,
    average_recall_table,
    format_average_recall_table,
    format_res_table,
    mask_intersection_union,
    mask_iou,
    recall_curve,
    res_metrics,
)


def reference_average_recall(ious):
    """The PNG benchmark's definition, evaluated literally: a (thresholds x phrases) comparison matrix."""
    ious = np.asarray(ious, dtype=np.float64)
    thresholds = np.arange(0, 1, 1e-5)
    # recall(t) = fraction of phrases with IoU >= t, computed by brute force in chunks of thresholds.
    recall = np.concatenate(
        [(ious[None, :] >= chunk[:, None]).mean(axis=1) for chunk in np.array_split(thresholds, 100)]
    )
    return float(sum((thresholds[i + 1] - thresholds[i]) * recall[i] for i in range(len(thresholds) - 1)))


CRAFTED_IOUS = {
    "all zeros": [0.0] * 7,
    "all ones": [1.0] * 5,
    "one value": [0.37],
    "at thresholds": [0.5, 0.00001, 0.99999, 0.0, 1.0, 0.25, 0.12345],
    "threshold grid": np.arange(0, 1, 1e-5)[::9973].tolist(),
    "just below/above": [np.nextafter(0.5, 0), np.nextafter(0.5, 1), np.nextafter(1e-5, 0)],
}


@pytest.mark.parametrize("name", CRAFTED_IOUS)
def test_average_recall_matches_reference_on_crafted_lists(name):
    ious = CRAFTED_IOUS[name]
    assert average_recall(ious) == pytest.approx(reference_average_recall(ious), abs=1e-9)


def test_average_recall_matches_reference_on_random_values_and_inputs():
    rng = np.random.default_rng(0)
    ious = np.concatenate([rng.random(3000), rng.integers(0, 100_000, 500) * 1e-5, np.zeros(50), np.ones(50)])
    expected = reference_average_recall(ious)
    assert average_recall(ious) == pytest.approx(expected, abs=1e-9)
    assert average_recall(torch.from_numpy(ious)) == pytest.approx(expected, abs=1e-9)
    assert average_recall(ious.tolist()) == pytest.approx(expected, abs=1e-9)
    assert average_recall([0.0]) == pytest.approx(1e-5)  # IoU 0 is still >= the first threshold, 0
    assert average_recall([1.0]) == pytest.approx(1 - 1e-5)  # the last threshold gap is not counted


def test_average_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        average_recall([])
    for bad in ([0.5, float("nan")], [1.2], [-0.1]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            average_recall(bad)
    with pytest.raises(ValueError, match="1-D"):
        average_recall(np.zeros((2, 2)))


def test_recall_curve_counts_ties_as_recalled():
    assert recall_curve([0.2, 0.5, 0.5, 0.9], np.array([0.0, 0.2, 0.5, 0.6, 1.0])).tolist() == [1, 1, 0.75, 0.25, 0]


def test_average_recall_table_subsets():
    ious = np.array([0.1, 0.4, 0.8, 0.9, 0.6])
    is_thing = np.array([True, True, False, False, True])
    is_plural = np.array([False, True, False, True, False])
    table = average_recall_table(ious, is_thing.tolist(), torch.from_numpy(is_plural))
    expected = {
        "all": ious,
        "thing": ious[is_thing],
        "stuff": ious[~is_thing],
        "singular": ious[~is_plural],
        "plural": ious[is_plural],
    }
    for name, subset in expected.items():
        assert table[name] == pytest.approx(100 * reference_average_recall(subset), abs=1e-7)
        assert table[f"num_{name}"] == len(subset)

    only_singular = average_recall_table([0.3, 0.7], [True, True], [False, False])
    assert math.isnan(only_singular["plural"]) and math.isnan(only_singular["stuff"])
    assert only_singular["num_plural"] == 0
    with pytest.raises(ValueError, match="same length"):
        average_recall_table([0.3, 0.7], [True], [False, False])
    with pytest.raises(ValueError, match="empty"):
        average_recall_table([], [], [])


def test_format_average_recall_table_has_one_row_per_model():
    untrained = average_recall_table([0.1, 0.2], [True, False], [False, True])
    trained = average_recall_table([0.6, 0.9], [True, False], [False, True])
    text = format_average_recall_table({"untrained": untrained, "trained": trained})
    lines = text.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == [
        "Model",
        "All",
        "Thing",
        "Stuff",
        "Single",
        "Plural",
    ]
    assert lines[2].startswith("| untrained |") and "15.0" in lines[2]
    assert lines[3].startswith("| trained ") and "75.0" in lines[3]
    assert lines[4].split("|")[2].strip() == "2"  # phrase counts row
    assert len(format_average_recall_table({"a": trained}, show_counts=False).splitlines()) == 3
    other_set = average_recall_table([0.6], [True], [False])
    labels = [
        line.split("|")[1].strip() for line in format_average_recall_table({"a": trained, "b": other_set}).splitlines()
    ]
    assert labels[-2:] == ["(phrases) a", "(phrases) b"]  # different evaluation sets: counts per row


def test_mask_iou_corner_cases():
    pred = torch.zeros(4, 3, 5, dtype=torch.bool)
    gt = torch.zeros(4, 3, 5, dtype=torch.bool)
    pred[1, 0, :2] = True  # prediction only → 0
    gt[2, :, :] = True  # ground truth only → 0
    pred[3, :2, :] = True
    gt[3, 1:, :] = True  # overlap of 5 pixels over a union of 15
    ious = mask_iou(pred, gt)
    assert ious.shape == (4,) and ious.dtype == torch.float64
    assert ious.tolist() == pytest.approx([1.0, 0.0, 0.0, 1 / 3])  # both empty → 1 by convention
    intersection, union = mask_intersection_union(pred, gt)
    assert intersection.tolist() == [0, 0, 0, 5] and union.tolist() == [0, 2, 15, 15]
    assert mask_iou(gt[3], gt[3]).item() == 1.0  # a single (H, W) mask works too
    with pytest.raises(TypeError, match="bool"):
        mask_iou(pred.float(), gt)
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(pred, gt[:2])


def _add_phrases(accumulator, rows):
    """rows: (image_id, narrative, phrase, iou, thing, plural)."""
    image_ids, narratives, phrases, ious, things, plurals = zip(*rows, strict=True)
    accumulator.add(
        torch.tensor(ious, dtype=torch.float64),
        torch.tensor(things),
        list(plurals),
        list(image_ids),
        torch.tensor(narratives),
        np.array(phrases),
    )


def test_phrase_accumulator_dedups_gathers_once_and_writes_outputs(tmp_path):
    process_0 = [("a", 0, 0, 0.9, True, False), ("a", 0, 1, 0.4, False, True), ("b", 1, 0, 0.25, True, False)]
    process_1 = [("c", 0, 0, 0.7, False, False), ("a", 0, 0, 0.9, True, False)]  # padding repeats ("a", 0, 0)
    accumulator_0, accumulator_1 = PhraseIouAccumulator(), PhraseIouAccumulator()
    _add_phrases(accumulator_0, process_0)
    _add_phrases(accumulator_0, process_0[:1])  # a duplicate inside one process too
    _add_phrases(accumulator_1, process_1)
    assert len(accumulator_0) == 3

    # Simulates accelerate.utils.gather_object: every process receives the concatenation of all local lists.
    local_lists = [list(accumulator_0._results.items()), list(accumulator_1._results.items())]
    accumulator_0.gather(lambda local: [item for items in local_lists for item in items])
    assert len(accumulator_0) == 4
    with pytest.raises(RuntimeError, match="once"):
        accumulator_0.gather(lambda local: local)
    with pytest.raises(RuntimeError, match="already gathered"):
        _add_phrases(accumulator_0, process_1)

    ious = [0.9, 0.4, 0.25, 0.7]
    table = accumulator_0.table()
    assert table["all"] == pytest.approx(100 * reference_average_recall(ious), abs=1e-7)
    assert (table["num_thing"], table["num_plural"]) == (2, 1)

    csv_path = accumulator_0.write_csv(tmp_path / "eval" / "phrase_ious.csv")
    with csv_path.open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["image_id"], r["narrative_index"], r["phrase_index"]) for r in rows] == [
        ("a", "0", "0"),
        ("a", "0", "1"),
        ("b", "1", "0"),
        ("c", "0", "0"),
    ]
    assert float(rows[2]["iou"]) == 0.25 and rows[1]["is_plural"] == "True"

    plot_path = accumulator_0.plot_recall_curves(tmp_path / "recall_iou.png")
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phrase_accumulator_gathers_with_an_accelerator():
    from accelerate import Accelerator

    accumulator = PhraseIouAccumulator()
    _add_phrases(accumulator, [(10, 0, 0, 0.25, True, False), (9, 0, 1, 0.5, False, True)])
    accumulator.gather(Accelerator(cpu=True))  # single process: gather_object is the identity
    ious, is_thing, is_plural = accumulator.arrays()  # key order: image 9 before image 10
    assert ious.tolist() == [0.5, 0.25] and is_thing.tolist() == [False, True] and is_plural.tolist() == [True, False]
    with pytest.raises(TypeError, match="Accelerator"):
        PhraseIouAccumulator().gather("not a gatherer")
    with pytest.raises(ValueError, match="one entry per phrase"):
        accumulator = PhraseIouAccumulator()
        accumulator.add([0.5], [True], [False], [1, 2], [0], [0])


@pytest.mark.slow
def test_phrase_accumulator_gathers_across_two_real_processes(tmp_path):
    """Two gloo processes (accelerate's CPU debug launcher, in a fresh interpreter so that no accelerator state of
    this test session leaks into the forked workers); rank 1 repeats a phrase of rank 0, as sampler padding does."""
    script = tmp_path / "gather.py"
    script.write_text(
        textwrap.dedent(f"""
        import json
        from accelerate import Accelerator, debug_launcher
        from training.metrics import PhraseIouAccumulator

        def worker():
            accelerator = Accelerator(cpu=True)
            rank = accelerator.process_index
            rows = [[("a", 0, 0, 0.9), ("a", 0, 1, 0.4)], [("b", 0, 0, 0.7), ("a", 0, 0, 0.9)]][rank]
            accumulator = PhraseIouAccumulator()
            accumulator.add([r[3] for r in rows], [True, True], [False, True], [r[0] for r in rows],
                            [r[1] for r in rows], [r[2] for r in rows])
            accumulator.gather(accelerator)
            with open(f"{tmp_path}/rank{{rank}}.json", "w") as file:
                json.dump(accumulator.arrays()[0].tolist(), file)

        if __name__ == "__main__":
            debug_launcher(worker, num_processes=2)
    """)
    )
    subprocess.run([sys.executable, str(script)], check=True, timeout=120, capture_output=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == [0.9, 0.4, 0.7]


def test_evaluate_module_loads_offline_and_matches():
    import evaluate

    rng = np.random.default_rng(1)
    ious = rng.random(200)
    is_thing = rng.random(200) < 0.6
    is_plural = rng.random(200) < 0.2
    metric = evaluate.load(PNG_AVERAGE_RECALL_PATH)
    metric.add_batch(ious=ious[:120].tolist(), is_thing=is_thing[:120].tolist(), is_plural=is_plural[:120].tolist())
    metric.add_batch(ious=ious[120:].tolist(), is_thing=is_thing[120:].tolist(), is_plural=is_plural[120:].tolist())
    result = metric.compute()
    expected = average_recall_table(ious, is_thing, is_plural)
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9)


def test_res_metrics_on_crafted_numbers():
    # IoUs: 0.5, 0.3, 0.25, 0.0, 1.0 (empty vs empty), 0.4
    intersections = [50, 30, 10, 0, 0, 40]
    unions = [100, 100, 40, 20, 0, 100]
    metrics = res_metrics(intersections, unions)
    assert metrics["mean_iou"] == pytest.approx(100 * (0.5 + 0.3 + 0.25 + 0 + 1 + 0.4) / 6)
    assert metrics["precision@0.3"] == pytest.approx(100 * 4 / 6)
    assert metrics["precision@0.4"] == pytest.approx(100 * 3 / 6)
    assert metrics["precision@0.5"] == pytest.approx(100 * 2 / 6)
    assert metrics["overall_iou"] == pytest.approx(100 * 130 / 360)
    assert metrics["num_sentences"] == 6
    with pytest.raises(ValueError, match="intersection <= union"):
        res_metrics([5], [4])
    with pytest.raises(ValueError, match="empty"):
        res_metrics([], [])

    accumulator = SentenceIouAccumulator()
    accumulator.add(torch.tensor(intersections[:4]), torch.tensor(unions[:4]), [10, 11, 12, 13])
    accumulator.add(intersections[3:], unions[3:], [13, 14, 15])  # sentence 13 again: counted once
    assert accumulator.gather().metrics() == pytest.approx(metrics)

    table = format_res_table({"EPNG (zero-shot)": metrics, "random init": res_metrics([1], [10])})
    lines = table.splitlines()
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == ["Model", "mIoU", "P@0.3", "P@0.4", "P@0.5", "oIoU"]
    assert [cell.strip() for cell in lines[3].split("|")[1:-1]] == ["random init", "10.0", "0.0", "0.0", "0.0", "10.0"]
