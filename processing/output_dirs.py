"""Output folders that appear whole or not at all: the converters write into a hidden sibling folder and rename it
into place when everything is written, so a failed or interrupted conversion leaves nothing behind.

An output folder may not be, contain or lie inside one of the conversion's sources: replacing it (`--overwrite`)
would delete the source data, and writing inside it would convert the output along with the data on the next run.
A run killed with SIGKILL cannot remove its hidden folder; the next conversion to the same output removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SourcePaths = Iterable[str | os.PathLike | None]


def check_output_dir(output: Path, overwrite: bool, sources: SourcePaths = ()) -> None:
    """Raise `FileExistsError` when `output` exists (a dangling link counts) and may not be replaced, and
    `ValueError` when `output` is, contains or lies inside one of `sources` (links resolved; `None` entries ignored).
    """
    real_output = Path(output).resolve()
    for source in sources:
        if source is None:
            continue
        real_source = Path(source).resolve()
        if real_output == real_source:
            relation = "is"
        elif real_source in real_output.parents:
            relation = "lies inside"
        elif real_output in real_source.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(
            f"output folder {output} {relation} the source {source}: writing there could delete or mix up the "
            "source data; choose an output folder outside it"
        )
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")


def _staging_prefix(output: Path) -> str:
    return f".{output.name}.incomplete-"


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def remove_stale_staging_dirs(output: Path) -> list[Path]:
    """Remove the hidden staging folders of `output` left by earlier conversions that were killed.

    A staging folder's name carries the id of the process writing it; a folder whose process no longer runs (or
    that carries no id) is stale. Folders of a conversion still running are kept.

    Returns:
        `list[Path]`: the folders removed.
    """
    removed = []
    if not output.parent.is_dir():
        return removed
    prefix = _staging_prefix(output)
    for path in output.parent.iterdir():
        if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir():
            continue
        owner = re.match(r"(\d+)-", path.name[len(prefix) :])
        if owner is not None and _process_running(int(owner.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.warning("Removed %s, left by an interrupted conversion", path)
        removed.append(path)
    return removed


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
def staged_output_dir(output: str | os.PathLike, overwrite: bool = False, sources: SourcePaths = ()) -> Iterator[Path]:
    """Yield an empty folder to write into; it becomes `output` when the block ends without an exception.

    The folder is a sibling of `output` (the final rename stays on one file system, hence atomic), with the
    permissions of a normal new folder. If the block raises, or `output` exists and `overwrite` is False, the folder is
    removed and `output` is left as it was. Stale staging folders of earlier killed runs are removed first, and an
    `output` overlapping one of `sources` is refused (see [`check_output_dir`]).
    """
    output = Path(output)
    check_output_dir(output, overwrite, sources)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging_dirs(output)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(output)}{os.getpid()}-", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes the folder private; the result should not be
        yield staging
        _move_into_place(staging, output, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
