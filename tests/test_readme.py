"""The README's Quickstart runs as pasted and prints what the README shows."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _quickstart() -> tuple[str, str]:
    """The Quickstart's Python block and the output block after it."""
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    after = section[section.index(code) + len(code) + len("```") :]  # past the code's fence
    output = re.search(r"```\n(.*?)```", after, re.S).group(1)
    return code, output


def test_the_quickstart_runs_as_pasted_and_prints_what_the_readme_shows(capsys):
    code, shown = _quickstart()
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    if "QUICKSTART_OUTPUT" in shown:
        pytest.fail("the README's Quickstart output is a placeholder")
    # The same words and numbers; the numbers within round-off of another CPU's BLAS.
    number = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
    assert re.sub(number, "#", printed).split() == re.sub(number, "#", shown).split(), printed
    for got, want in zip(re.findall(number, printed), re.findall(number, shown), strict=True):
        assert abs(float(got) - float(want)) <= max(0.02, 0.1 * abs(float(want))), printed
