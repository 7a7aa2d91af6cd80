"""`epng-ground` end to end: printed table, overlay, JSON with RLE masks, given phrases, bad input; the spaCy child
started before torch is imported, its spans used, the parse in the process where it fails."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from app_testing import save_tiny_model
from PIL import Image
from pycocotools import mask as mask_utils

import training.ground
from modeling_epng.phrase_extraction import clear_phrase_cache, load_spacy_pipeline
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


def test_the_command_starts_the_phrase_parser_before_importing_torch():
    script = textwrap.dedent(
        """
        import sys
        from training.ground import start_phrase_parser
        parser = start_phrase_parser()
        assert parser is not None and parser.wait_until_ready(120), "the child did not load spaCy"
        heavy = sorted({"torch", "transformers", "modeling_epng", "numpy", "PIL"} & set(sys.modules))
        assert not heavy, heavy
        spans = parser.submit("a dog and a red ball on the grass").child_spans()
        print(spans)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False, cwd=os.getcwd()
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "[(0, 5), (10, 20), (24, 33)]"


def test_no_parser_where_the_package_found_has_no_background_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(training.ground, "_usable_cores", lambda: 2)
    (tmp_path / "modeling_epng").mkdir()
    (tmp_path / "modeling_epng" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "modeling_epng")
    assert training.ground.start_phrase_parser() is None


def _ground_outputs(model_folder, image_file, folder, capsys) -> tuple[list[dict], str, bytes]:
    records = run(
        [str(image_file), NARRATIVE, "--model_name_or_path", str(model_folder), "--output_file", str(folder / "o.png")]
    )
    printed = capsys.readouterr().out.replace(str(folder), "FOLDER")
    return records, printed, (folder / "o.png").read_bytes()


def test_the_childs_spans_are_used_and_the_outputs_are_those_of_the_parse_here(
    model_folder, image_file, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(training.ground, "_usable_cores", lambda: 1)  # no child: parsed here
    clear_phrase_cache()
    (tmp_path / "here").mkdir()
    here = _ground_outputs(model_folder, image_file, tmp_path / "here", capsys)
    assert [record["phrase"] for record in here[0]] == ["a dog", "a red ball", "the grass"]

    monkeypatch.setattr(training.ground, "_usable_cores", lambda: 2)
    started = []
    original = training.ground.start_phrase_parser
    monkeypatch.setattr(training.ground, "start_phrase_parser", lambda model: started.append(original(model))
                        or started[-1])  # fmt: skip
    clear_phrase_cache()
    load_spacy_pipeline.cache_clear()
    (tmp_path / "child").mkdir()
    child = _ground_outputs(model_folder, image_file, tmp_path / "child", capsys)
    assert started and started[0] is not None and started[0].loaded
    assert load_spacy_pipeline.cache_info().misses == 0  # spaCy was not loaded in this process
    assert child == here


def test_a_failing_child_leaves_the_parse_and_its_error_to_the_process(model_folder, image_file, tmp_path, monkeypatch):
    monkeypatch.setattr(training.ground, "_usable_cores", lambda: 2)
    clear_phrase_cache()
    with pytest.raises(OSError, match=r"'no_such_spacy_pipeline' is not installed.*epng\[phrases\]"):
        run([str(image_file), NARRATIVE, "--model_name_or_path", str(model_folder), "--spacy_model",
             "no_such_spacy_pipeline", "--output_file", str(tmp_path / "overlay.png")])  # fmt: skip
    assert not (tmp_path / "overlay.png").exists()


def test_without_spacy_the_command_names_the_extra_to_install(model_folder, image_file, tmp_path):
    blocker = tmp_path / "no_spacy"
    blocker.mkdir()
    (blocker / "spacy.py").write_text("raise ImportError('No module named spacy')\n")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(blocker), os.getcwd()])}
    completed = subprocess.run(
        [sys.executable, "-m", "training.ground", str(image_file), NARRATIVE, "--model_name_or_path",
         str(model_folder), "--output_file", str(tmp_path / "overlay.png"), "--no_optimize"],
        capture_output=True, text=True, timeout=300, check=False, env=environment,
    )  # fmt: skip
    assert completed.returncode != 0
    assert 'Automatic phrases need spaCy and an English pipeline: pip install "epng[phrases]"' in completed.stderr
    assert not (tmp_path / "overlay.png").exists()
