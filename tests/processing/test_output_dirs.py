"""staged_output_dir: the shared all-or-nothing output folder of the PNG, refer and checkpoint converters."""

import os
import stat

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
