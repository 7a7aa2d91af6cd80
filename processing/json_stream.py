"""Incremental JSON decoding: the items of a huge top-level array or object, one at a time, in bounded memory.

Used by the PNG reader so that the 133k-narrative training file is never loaded whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

_NON_SPACE = re.compile(r"\S")
_DECODER = json.JSONDecoder()


class JsonStream:
    """Decodes a JSON text value by value from a text file, holding only a bounded window of it.

    `json.JSONDecoder.raw_decode` does the decoding (C speed); this class only walks the structural characters of
    the enclosing array/object. Offsets are in characters of the text stream (bytes when decoded as latin-1).
    """

    def __init__(self, file, make_error: Callable[[str], Exception], base_offset=0, chunk_chars=1 << 20):
        self._file = file
        self._make_error = make_error
        self._buffer = ""
        self._pos = 0
        self._base = base_offset
        self._chunk_chars = chunk_chars

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _fill(self) -> bool:
        chunk = self._file.read(self._chunk_chars)
        if not chunk:
            return False
        self._base += self._pos
        self._buffer = self._buffer[self._pos :] + chunk
        self._pos = 0
        return True

    def _error(self, detail):
        return self._make_error(f"invalid JSON at character {self.offset}: {detail}")

    def peek(self) -> str | None:
        """Next non-whitespace character (not consumed), or None at the end of the file."""
        while True:
            match = _NON_SPACE.search(self._buffer, self._pos)
            if match:
                self._pos = match.start()
                return self._buffer[self._pos]
            self._pos = len(self._buffer)
            if not self._fill():
                return None

    def expect(self, allowed: str) -> str:
        char = self.peek()
        if char is None or char not in allowed:
            raise self._error(f"expected one of {allowed!r}, found {char!r}")
        self._pos += 1
        return char

    def value(self) -> Any:
        if self.peek() is None:
            raise self._error("unexpected end of file")
        while True:
            try:
                obj, end = _DECODER.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as error:
                if self._fill():
                    continue
                raise self._error(error.msg) from error
            # A value ending exactly at the window's end may be a cut number ("12" of "123"): read on and retry.
            if end == len(self._buffer) and self._fill():
                continue
            self._pos = end
            return obj

    def array_items(self, opened: bool = False) -> Iterator[tuple[int, Any]]:
        """Yields `(offset, value)` for the array starting here; `opened=True` starts at an element inside it."""
        if not opened:
            self.expect("[")
            if self.peek() == "]":
                self._pos += 1
                return
        while True:
            self.peek()
            offset = self.offset
            yield offset, self.value()
            if self.expect(",]") == "]":
                return

    def object_members(self, streamed: Callable[[str], Callable[[Any], None] | None]) -> None:
        """Walks a top-level object; arrays of members for which `streamed(key)` gives a callback are streamed."""
        self.expect("{")
        if self.peek() == "}":
            return
        while True:
            key = self.value()
            self.expect(":")
            callback = streamed(key)
            if callback is not None and self.peek() == "[":
                for _, item in self.array_items():
                    callback(item)
            else:
                self.value()
            if self.expect(",}") == "}":
                return
