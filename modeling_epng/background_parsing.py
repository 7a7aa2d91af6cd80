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
"""Automatic phrases parsed in a child Python process, so that the parse runs on another core while the caller
computes (the pipeline runs the text encoder meanwhile).

A thread would not overlap: spaCy holds the GIL for most of a parse and the model's Python code needs it too, so the
two take turns (measured on 2 cores: a parse in a thread added its whole 7.5 ms to a concurrent 16 ms text-encoder
forward; in a child process, nothing). The child runs `phrase_extraction.serve_phrase_requests`, loading that file by
path, so it finds it also where this package is a copy (a Hub repo's remote code). This file, too, imports only the
standard library at the top, so that `epng-ground` loads it by path and starts the child before it imports torch.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

PHRASE_EXTRACTION_FILE = Path(__file__).with_name("phrase_extraction.py")


class PendingPhraseSpans:
    """The spans of one narrative being parsed by a [`BackgroundPhraseParser`]; `result()` waits for them."""

    def __init__(self, text: str, spacy_model: str | None, future: Future):
        self.text, self.spacy_model, self._future = text, spacy_model, future

    def result(self) -> list[tuple[int, int]]:
        """The spans, as `extract_phrase_spans` gives them (and now cached). Should the child fail, the narrative is
        parsed here instead, which raises the error, if any."""
        from .phrase_extraction import cache_phrase_spans, extract_phrase_spans

        spans = self.child_spans()
        if spans is None:
            return extract_phrase_spans(self.text, self.spacy_model)
        return list(cache_phrase_spans(self.text, self.spacy_model, spans))

    def child_spans(self) -> list[tuple[int, int]] | None:
        """The spans the child found, or `None` should it fail (nothing is parsed here, nothing cached)."""
        response = self._child_response()
        return None if response is None else [(int(start), int(end)) for start, end in response["spans"]]

    def token_phrase_ids(self) -> list[int] | None:
        """The phrase index of every token of the offsets submitted with the narrative (-1 outside phrases), as the
        child mapped the spans of `result()` onto them; `None` where it did not: no offsets submitted, a phrase that
        covers no token (the caller maps those itself, to warn or raise), or the child failed."""
        response = self._child_response()
        return None if response is None else response.get("phrase_ids")

    def _child_response(self) -> dict | None:
        try:
            return self._future.result(timeout=BackgroundPhraseParser.timeout)
        except Exception:
            return None


class BackgroundPhraseParser:
    """
    A child Python process that parses narratives with a spaCy pipeline (see the module docstring for why not a
    thread). It starts loading the pipeline at once; until it is ready, `submit` returns `None` and the caller parses
    in its own process. Requests carry an id, so threads may submit concurrently. If the child fails to start (spaCy
    or the pipeline missing) or dies, it is not used again: callers parse in their own process, where the error, if
    any, is raised. It ends with the parent (its stdin closes) or `close()`.

    Args:
        spacy_model (`str`, *optional*): the spaCy English pipeline (see [`load_spacy_pipeline`]).
    """

    timeout = 60.0  # seconds a result may take before the narrative is parsed in the caller's process instead

    def __init__(self, spacy_model: str | None = None):
        self.spacy_model = spacy_model
        self._ready = threading.Event()
        self._alive = True
        self.loaded = False  # the child loaded its pipeline (it may have died since)
        self._futures: dict[int, Future] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        # The file is run by path, so the child finds it also where this package is a copy (a Hub repo's remote
        # code); one BLAS thread each, as the parse is meant for one spare core. For the default (small) pipelines,
        # which do not use torch, torch is kept out: thinc imports it where it is installed, 1.5-2 s of a fresh
        # child's 3 s start on a 2-core AMD EPYC.
        bootstrap = (
            "import importlib.util, sys; sys.argv[2] or sys.modules.setdefault('torch', None); "
            "spec = importlib.util.spec_from_file_location('epng_phrase_worker', "
            "sys.argv[1]); module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "module.serve_phrase_requests(sys.argv[2] or None)"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", bootstrap, str(PHRASE_EXTRACTION_FILE), spacy_model or ""],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        except OSError:  # no Python to start (an embedding host): parse in this process
            self._process = None
            self._alive = False
            self._ready.set()
            return
        threading.Thread(target=self._read_responses, name="epng-phrase-parser", daemon=True).start()

    @property
    def ready(self) -> bool:
        """Whether the child has loaded its pipeline and takes narratives."""
        return self._alive and self._ready.is_set()

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Block until the child is ready (or has failed, or `timeout` seconds passed); returns `ready`."""
        self._ready.wait(timeout)
        return self.ready

    def submit(self, text: str, token_offsets: list[list[int]] | None = None) -> PendingPhraseSpans | None:
        """Send `text` to the child, with the `(char_start, char_end)` of the tokens of its tokenisation for the child
        to map the phrases onto (see `PendingPhraseSpans.token_phrase_ids`); `None` while the child is not ready (or
        no longer alive)."""
        if not self.ready:
            return None
        future: Future = Future()
        request = {"text": text} if token_offsets is None else {"text": text, "offsets": token_offsets}
        with self._lock:
            request_id = next(self._ids)
            self._futures[request_id] = future
            try:
                self._process.stdin.write(json.dumps({"id": request_id, **request}) + "\n")
                self._process.stdin.flush()
            except (OSError, ValueError):
                self._futures.pop(request_id)
                self._alive = False
                return None
        return PendingPhraseSpans(text, self.spacy_model, future)

    def _read_responses(self) -> None:
        for line in self._process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not ours: something the pipeline's loading printed
            if message.get("ready"):
                self.loaded = True
                self._ready.set()
            elif "error" in message and "id" not in message:
                break  # the pipeline could not be loaded
            elif "id" in message:
                with self._lock:
                    future = self._futures.pop(message["id"], None)
                if future is not None:
                    if "spans" in message:
                        future.set_result(message)
                    else:
                        future.set_exception(RuntimeError(message.get("error", "the phrase parser failed")))
        self._alive = False
        self._ready.set()
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            future.set_exception(RuntimeError("the phrase parser process ended"))

    @property
    def pid(self) -> int | None:
        """The child's process id (e.g. to give it a core of its own with `os.sched_setaffinity`)."""
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        """End the child process (at once: it holds nothing but the loaded pipeline)."""
        self._alive = False
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._process.stdin.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


_background_parsers: dict[str | None, BackgroundPhraseParser] = {}
_background_parsers_lock = threading.Lock()


def background_phrase_parser(spacy_model: str | None = None) -> BackgroundPhraseParser:
    """The process-wide [`BackgroundPhraseParser`] of `spacy_model`, started at the first call, and again if its child
    died after loading the pipeline (not if it could not load it: every call would start a child in vain)."""
    with _background_parsers_lock:
        parser = _background_parsers.get(spacy_model)
        if parser is None or (parser.loaded and not parser._alive):
            parser = _background_parsers[spacy_model] = BackgroundPhraseParser(spacy_model)
        return parser


@atexit.register
def _close_background_parsers() -> None:
    with _background_parsers_lock:
        parsers = list(_background_parsers.values())
        _background_parsers.clear()
    for parser in parsers:
        parser.close()


__all__ = ["BackgroundPhraseParser", "PendingPhraseSpans", "background_phrase_parser"]
