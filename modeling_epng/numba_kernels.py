# Copyright 2026 The EPNG Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""numba compilation of the optional CPU kernels (`epng[fast]`): each falls back to its torch route where numba is not
installed or cannot compile it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

_OPTIONS = {"nogil": True, "fastmath": {"contract"}, "boundscheck": False}


def compile_kernel(function: Callable, signatures: Callable[[Any], Any], what: str) -> Callable | None:
    """
    `function` compiled by numba (about a second the first time, then loaded from numba's cache), or `None` where
    numba is not installed (silently) or cannot compile it (with a `RuntimeWarning` naming `what`).

    Args:
        function: the kernel, in the subset of Python that numba compiles.
        signatures: takes the numba module and returns the signature (or list of signatures) to compile.
        what: what the kernel does, for the warning ("the fused mask resize").
    """
    try:
        import numba
    except ImportError:
        return None
    try:
        return numba.njit(signatures(numba), cache=True, **_OPTIONS)(function)
    except Exception as cache_error:  # noqa: BLE001 - numba's errors have no common base; any means "not cached"
        try:  # where no cache directory is writable
            return numba.njit(signatures(numba), **_OPTIONS)(function)
        except Exception as error:  # noqa: BLE001
            warnings.warn(
                f"numba could not compile {what} ({cache_error!r}; {error!r}): the torch route runs instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None


__all__ = ["compile_kernel"]
