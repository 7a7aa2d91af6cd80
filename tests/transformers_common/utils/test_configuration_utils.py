"""Stub of transformers' `tests/utils/test_configuration_utils.py`, which the sdist does not ship.

`ConfigTester.check_config_arguments_init` is the only user of `config_common_kwargs`, and it returns before reading
it for composite configs (those with `sub_configs`), which `EpngConfig` is.
"""

config_common_kwargs = {}
