"""The ablation command on a minimal budget (resumable, budget-checked) and its table logic."""

import json

import pytest

from training import ablation

MINIMAL = ["--train", "4", "--val", "2", "--epochs", "1", "--image_size", "64", "--batch_size", "2"]


def test_ablation_runs_writes_json_and_markdown_and_resumes(tmp_path, monkeypatch):
    argv = ["--output_dir", str(tmp_path), "--seeds", "0", "1", "--datasets", "hard", *MINIMAL]
    result = ablation.run([*argv, "--rows", "LPA Euclidean", "SAL normalised one-way"])
    state = json.loads((tmp_path / "ablation.json").read_text())
    runs = state["results"]["hard"]
    assert set(runs) == {ablation.run_key({}), ablation.run_key({"sal_variant": "reference", "sal_normalize": True})}
    for seeds in runs.values():
        assert set(seeds) == {"0", "1"}
        assert all(0.0 <= seeds[s]["all"] <= 100.0 and seeds[s]["num_phrases"] > 0 for s in seeds)
    # "SAL paper" is the baseline configuration: shown from the same runs, not trained again.
    rows = result["summary"]["hard"]
    assert rows["SAL paper"]["mean"] == rows["LPA Euclidean"]["mean"] and rows["LPA Euclidean"]["num_seeds"] == 2
    table = (tmp_path / "ablation.md").read_text()
    assert "SAL normalised one-way" in table and "MHSA" not in table and " ± " in table

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ablation, "train_and_evaluate", fail)
    ablation.run([*argv, "--rows", "LPA Euclidean"])  # every run is in the JSON: nothing trains
    with pytest.raises(ValueError, match="another budget"):
        ablation.run([*argv[:-1], "3"])


def _run(value):
    return {name: value for name in ablation.SUBSETS}


def test_summary_marks_only_differences_beyond_twice_the_pooled_std():
    key = ablation.run_key
    results = {
        "easy": {
            key({}): {"0": _run(50.0), "1": _run(52.0), "2": _run(54.0)},  # mean 52, std 2
            key({"sal_weight": 0.0}): {"0": _run(59.0), "1": _run(61.0), "2": _run(63.0)},  # +9 > 2 * 2
            key({"self_attention_type": "mhsa"}): {"0": _run(53.0), "1": _run(55.0), "2": _run(57.0)},  # +3 < 4
            key({"lpa_distance": "squared"}): {"0": _run(40.0)},  # one seed: never marked
        }
    }
    rows = ablation.summarize(results, ["easy"], [0, 1, 2])["easy"]
    assert rows["SAL off"]["differs"]["all"] and rows["SAL off"]["mean"]["all"] == pytest.approx(61.0)
    assert not rows["MHSA"]["differs"]["all"]
    assert not rows["LPA squared"]["differs"]["all"] and rows["LPA squared"]["num_seeds"] == 1
    assert not rows["LPA Euclidean"]["differs"]["all"] and not rows["SAL paper"]["differs"]["all"]
    assert "SAL reference" not in rows  # not run yet
    table = ablation.markdown({"easy": rows}, {"seeds": [0, 1, 2]})
    assert "61.0 ± 2.0*" in table and "55.0 ± 2.0 " in table and "LPA squared (n=1)" in table
