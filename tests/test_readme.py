"""The README's examples are the truth: its Python example runs as written (with fewer steps)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "Trainer(" in b)
    code = example.replace("max_steps=200", "max_steps=3")
    assert code != example, "the README example's step count changed: update this test"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "runs" / "jepa" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "runs" / "jepa" / "tb").is_dir()


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
