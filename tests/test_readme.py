"""Every ```python block of the README runs as written, from the repository root."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [(README.count("\n", 0, m.start()) + 2, m.group(1))
          for m in re.finditer(r"^```python\n(.*?)^```", README, re.S | re.M)]


def test_the_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.parametrize("code", [code for _, code in BLOCKS],
                         ids=[f"README.md line {line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(code):
    """`python -c` from the root imports this checkout's lip_jax, as a reader's shell would."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
