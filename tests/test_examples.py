"""The example scripts a new user copies run as written (small clusters, short time limits)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_plan_llama_example(tmp_path: Path) -> None:
    out = _run(tmp_path, "plan_llama_dgx_h100.py", "1", "3")
    assert "plan for LlamaForCausalLM" in out and "stages:" in out
    assert (tmp_path / "llama-3-8b-plan.json").exists()
    assert (tmp_path / "llama-3-8b-report.html").exists()


@pytest.mark.slow
def test_what_if_example(tmp_path: Path) -> None:
    out = _run(tmp_path, "what_if.py")
    assert "[5] ZeRO-3, full recompute" in out and "fastest that fits" in out


@pytest.mark.slow
def test_heterogeneous_example(tmp_path: Path) -> None:
    out = _run(tmp_path, "heterogeneous.py")
    assert "stage 0 on A100" in out and "stage 1 on H100" in out
