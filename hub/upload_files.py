"""Which files of a local folder a push uploads: an allowlist, never a blocklist.

A folder handed to a push can hold anything its owner left there (`.env`, keys, notes, training leftovers, links to
files elsewhere). Only files matching the push's allow patterns go up; everything else is skipped and reported, so a
dry run shows both lists. Links are followed only when their target lies inside the folder: a link pointing
elsewhere (`passwd_link -> /etc/passwd`, a linked folder) is skipped whatever its name.

Patterns are `fnmatch` patterns on the path relative to the folder, with one rule about depth: a pattern without
`/` matches files at the top of the folder only, and a pattern `**/PATTERN` matches a file name at any depth.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

OUTWARD_LINK = "link out of the folder"
BROKEN_LINK = "broken link"
LINKED_FOLDER = "linked folder, not entered"


@dataclass
class FileSelection:
    """The outcome of [`select_files`].

    Attributes:
        files (`list[str]`): relative POSIX paths to upload, sorted.
        skipped (`list[str]`): what is not uploaded, sorted: a file, a folder (`name/`) none of whose files is
            uploaded, or a link, with the reason in parentheses when it is not simply "not in the allowlist".
    """

    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether the relative POSIX `path` matches one of `patterns` (depth rule in the module docstring)."""
    name = PurePosixPath(path).name
    for pattern in patterns:
        if pattern.startswith("**/"):
            if fnmatchcase(name, pattern[3:]):
                return True
        elif "/" not in path and fnmatchcase(path, pattern):
            return True
    return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def select_files(folder: str | os.PathLike, allow_patterns: Iterable[str]) -> FileSelection:
    """Split the files under `folder` into those matching `allow_patterns` and the rest.

    The walk does not enter linked folders; a linked file counts only when its target is a file inside `folder`.
    """
    folder = Path(folder)
    real_folder = folder.resolve()
    allow_patterns = tuple(allow_patterns)
    selected, skipped = [], {}
    for root, dir_names, file_names in os.walk(folder, followlinks=False):
        root_path = Path(root)
        for name in sorted(dir_names):
            if (root_path / name).is_symlink():
                relative = (root_path / name).relative_to(folder).as_posix()
                inside = _inside((root_path / name).resolve(), real_folder)
                skipped[relative] = LINKED_FOLDER if inside else OUTWARD_LINK
        for name in file_names:
            path = root_path / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not _inside(target, real_folder):
                    skipped[relative] = OUTWARD_LINK
                    continue
                if not target.is_file():
                    skipped[relative] = BROKEN_LINK
                    continue
            if matches(relative, allow_patterns):
                selected.append(relative)
            else:
                skipped[relative] = None
    return FileSelection(sorted(selected), _collapse(skipped, selected))


def _collapse(skipped: dict[str, str | None], selected: list[str]) -> list[str]:
    """One entry per skipped file, except that a folder none of whose files is selected is listed once as `name/`."""
    folders_with_uploads = {parent.as_posix() for path in selected for parent in PurePosixPath(path).parents}
    entries = set()
    for path, reason in skipped.items():
        if reason is not None:
            entries.add(f"{path} ({reason})")
            continue
        parts = PurePosixPath(path).parts
        prefixes = ("/".join(parts[:depth]) for depth in range(1, len(parts)))
        top_skipped_folder = next((prefix for prefix in prefixes if prefix not in folders_with_uploads), None)
        entries.add(f"{top_skipped_folder}/" if top_skipped_folder else path)
    return sorted(entries)


def outward_links(folder: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Those of `names` (paths relative to `folder`) that are links pointing out of `folder`: writing to them would
    write elsewhere."""
    folder = Path(folder)
    real_folder = folder.resolve()
    return [
        name for name in names if (folder / name).is_symlink() and not _inside((folder / name).resolve(), real_folder)
    ]


def exact_patterns(paths: Iterable[str]) -> list[str]:
    """`fnmatch` patterns matching exactly `paths` (so `HfApi.upload_folder` takes those files and nothing else)."""
    return [glob.escape(path) for path in paths]
