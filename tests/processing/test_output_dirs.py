"""staged_output_dir: the shared all-or-nothing output folder of the PNG, refer and checkpoint converters."""

import os
import stat
import subprocess
import sys

import pytest

from processing.output_dirs import staged_output_dir


def siblings(folder):
    return sorted(path.name for path in folder.parent.iterdir())


def test_finished_block_becomes_the_output_with_normal_permissions(tmp_path):
    output = tmp_path / "out"
    with staged_output_dir(output) as staging:
        (staging / "a.txt").write_text("a")
        assert not output.exists()
    assert (output / "a.txt").read_text() == "a" and siblings(output) == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(output.stat().st_mode) == 0o777 & ~umask


def test_failed_block_leaves_an_existing_output_untouched(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), staged_output_dir(output, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [path.name for path in output.iterdir()] == ["old.txt"] and siblings(output) == ["out"]


def test_overwrite_replaces_and_refusal_names_the_option(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"), staged_output_dir(output):
        pass
    with staged_output_dir(output, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [path.name for path in output.iterdir()] == ["new.txt"] and siblings(output) == ["out"]


def test_output_that_appears_meanwhile_is_not_replaced_without_overwrite(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(FileExistsError, match="overwrite"), staged_output_dir(output) as staging:
        (staging / "new.txt").write_text("new")
        output.mkdir()
        (output / "other.txt").write_text("other")
    assert [path.name for path in output.iterdir()] == ["other.txt"] and siblings(output) == ["out"]


@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_output_overlapping_a_source_is_refused_and_the_source_kept(tmp_path, where):
    source = tmp_path / "data" / "benchmark"
    (source / "images").mkdir(parents=True)
    (source / "images" / "a.jpg").write_text("image")
    output = {"is": source, "inside": source / "images" / "out", "contains": tmp_path / "data"}[where]
    relation = {"is": "is", "inside": "lies inside", "contains": "contains"}[where]
    with pytest.raises(ValueError, match=f"{relation} the source"), staged_output_dir(output, True, (source,)):
        pass
    assert (source / "images" / "a.jpg").read_text() == "image"
    # a link to the source is the source
    (tmp_path / "link").symlink_to(source, target_is_directory=True)
    with pytest.raises(ValueError, match="is the source"), staged_output_dir(tmp_path / "link", True, (source,)):
        pass
    with staged_output_dir(tmp_path / "data" / "benchmark-hf", sources=(source, None)) as staging:
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "data" / "benchmark-hf" / "a.txt").exists()


def test_stale_staging_folders_of_killed_runs_are_removed(tmp_path):
    output = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [tmp_path / f".out.incomplete-{dead.stdout.strip()}-abc", tmp_path / ".out.incomplete-x1y2z3"]
    running = tmp_path / f".out.incomplete-{os.getpid()}-def"
    other = tmp_path / ".other.incomplete-x1y2z3"
    for folder in (*stale, running, other):
        folder.mkdir()
        (folder / "part.parquet").write_text("half")
    with staged_output_dir(output) as staging:
        assert all(not folder.exists() for folder in stale)
        assert running.exists() and other.exists()
        assert staging.name.startswith(f".out.incomplete-{os.getpid()}-")
    assert siblings(output) == sorted([".other.incomplete-x1y2z3", running.name, "out"])
