"""Stub of transformers' `tests/generation/test_utils.py`, which the sdist does not ship.

`ModelTesterMixin` only checks whether a test class inherits `GenerationTesterMixin` (models that can `generate()`
must); EPNG cannot generate, so its test class does not inherit it and the stub needs no content.
"""


class GenerationTesterMixin:
    pass
