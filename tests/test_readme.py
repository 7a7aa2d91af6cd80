"""The README's offline example runs and prints what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_minimal_example_runs(capsys):
    section = README.read_text().split("## Minimal example (offline)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "torch.Size([1, 2, 16, 24])" in capsys.readouterr().out
