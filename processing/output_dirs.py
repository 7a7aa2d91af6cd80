"""Output folders that appear whole or not at all: the converters write into a hidden sibling folder and rename it
into place when everything is written, so a failed or interrupted conversion leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Raise `FileExistsError` when `output` exists (a dangling link counts) and may not be replaced."""
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")


def _move_into_place(staging: Path, output: Path, overwrite: bool) -> None:
    """Rename the finished `staging` folder to `output`; an existing `output` is removed only once replaced."""
    check_output_dir(output, overwrite)  # it may have appeared while the conversion ran
    if not output.exists() and not output.is_symlink():
        os.rename(staging, output)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
    old = trash / output.name
    os.rename(output, old)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(old, output)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staged_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder to write into; it becomes `output` when the block ends without an exception.

    The folder is a sibling of `output` (the final rename stays on one file system, hence atomic), with the
    permissions of a normal new folder. If the block raises, or `output` exists and `overwrite` is False, the folder is
    removed and `output` is left as it was.
    """
    output = Path(output)
    check_output_dir(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.incomplete-", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes the folder private; the result should not be
        yield staging
        _move_into_place(staging, output, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
