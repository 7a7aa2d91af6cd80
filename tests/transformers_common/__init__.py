"""transformers' own common tests, run against EPNG as a conformance suite.

`test_modeling_common.py` (`ModelTesterMixin`) and `test_configuration_common.py` (`ConfigTester`) are copied
unchanged, Apache-2.0 headers included, from the `tests/` folder of the transformers 5.25.0 source distribution
(`pip download --no-binary :all: --no-deps transformers==5.25.0`; the `test` extra installs that release). The
sdist does not ship three helper modules they import; `exporters/`, `generation/` and `utils/` hold stubs for them (see each file for what the stub leaves out).
`tests/modeling_epng/test_transformers_common.py` runs the suite.
"""
