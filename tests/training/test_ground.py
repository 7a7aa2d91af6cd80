"""`epng-ground` end to end: printed table, overlay, JSON with RLE masks, given phrases, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from app_testing import save_tiny_model
from PIL import Image
from pycocotools import mask as mask_utils

from training.ground import run

NARRATIVE = "In this image we can see a dog and a red ball on the grass."


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, minilm_path):
    return save_tiny_model(tmp_path_factory.mktemp("ground") / "epng-tiny", minilm_path)


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    return path


def test_prints_phrases_and_writes_overlay_and_json(model_folder, image_file, tmp_path, capsys):
    output_dir = tmp_path / "out"
    records = run(
        [
            str(image_file),
            NARRATIVE,
            "--model_name_or_path", str(model_folder),
            "--output_file", str(output_dir / "overlay.png"),
            "--json_file", str(output_dir / "result.json"),
        ]
    )  # fmt: skip

    printed = capsys.readouterr().out
    assert [record["phrase"] for record in records] == ["a dog", "a red ball", "the grass"]
    for record in records:
        line = next(line for line in printed.splitlines() if line.startswith(record["phrase"] + " "))
        assert f"{record['score']:.3f}" in line and str(record["area"]) in line
    overlay = Image.open(output_dir / "overlay.png")
    assert overlay.size[0] == 2 * 70 and overlay.size[1] >= 50  # image + narrative panel of the image's width
    content = json.loads((output_dir / "result.json").read_text())
    assert content["narrative"] == NARRATIVE and content["size"] == [50, 70]
    assert content["phrases"] == records
    for record in content["phrases"]:
        assert NARRATIVE[record["start"] : record["end"]] == record["phrase"]
        mask = mask_utils.decode({"size": record["mask"]["size"], "counts": record["mask"]["counts"].encode()})
        assert mask.shape == (50, 70) and int(mask.sum()) == record["area"]
    assert sorted(path.name for path in output_dir.iterdir()) == ["overlay.png", "result.json"]  # no temporaries


def test_given_phrases_and_console_script(model_folder, image_file, tmp_path):
    script = Path(sys.executable).with_name("epng-ground")
    completed = subprocess.run(
        [
            str(script), str(image_file), NARRATIVE,
            "--model_name_or_path", str(model_folder),
            "--output_file", str(tmp_path / "overlay.png"),
            "--json_file", str(tmp_path / "result.json"),
            "--phrases", "dog", "the grass",
            "--no_optimize",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    phrases = json.loads((tmp_path / "result.json").read_text())["phrases"]
    assert [(p["phrase"], p["start"]) for p in phrases] == [("dog", 27), ("the grass", NARRATIVE.index("the grass"))]
    assert "the grass" in completed.stdout and (tmp_path / "overlay.png").is_file()


def test_no_phrase_and_bad_input(model_folder, image_file, tmp_path, capsys):
    assert run([str(image_file), "In this image we can see the top.", "--model_name_or_path", str(model_folder),
                 "--output_file", str(tmp_path / "overlay.png")]) == []  # fmt: skip
    assert "no groundable noun phrase" in capsys.readouterr().out
    assert (tmp_path / "overlay.png").is_file()
    with pytest.raises(SystemExit):
        run([str(tmp_path / "missing.jpg"), NARRATIVE, "--model_name_or_path", str(model_folder)])
    assert "is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([str(image_file), "  ", "--model_name_or_path", str(model_folder)])
    assert "the narrative is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([str(image_file), NARRATIVE, "--model_name_or_path", str(model_folder), "--phrases", "a cat"])
    assert "Phrase 'a cat' not found" in capsys.readouterr().err
