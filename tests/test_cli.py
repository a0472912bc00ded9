"""``autopar`` command line: the inspect table and JSON, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autopar.cli import main
from autopar.table import render

ROOT = Path(__file__).resolve().parent.parent
MLP = f"{ROOT}/examples/models.py:mlp"
TINY_GPT = f"{ROOT}/examples/models.py:tiny_gpt"
LLAMA = f"{ROOT}/examples/configs/llama-3-8b.json"
FACTORIES = Path(__file__).resolve().parent / "spec_factories.py"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    """The body rows of the layer table: between the first and second rule lines."""
    lines = out.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("-") and set(line) <= {"-", " "}]
    assert len(rules) == 2, out
    return [line.split() for line in lines[rules[0] + 1:rules[1]]]


def covered_indices(rows: list[list[str]]) -> list[int]:
    """Layer indices the rows stand for ("3-31" is a collapsed row)."""
    indices: list[int] = []
    for row in rows:
        first, _, last = row[0].partition("-")
        indices.extend(range(int(first), int(last or first) + 1))
    return indices


def assert_one_error_line(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("autopar: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_inspect_mlp_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--model", MLP)
    assert code == 0, err
    rows = table_rows(out)
    assert covered_indices(rows) == [0, 1, 2, 3]  # four Linear layers, one row each
    assert [r[1] for r in rows] == ["0", "2", "4", "6"]
    assert "totals:" in out
    assert "150,794" in out  # 64*256+256 + 2*(256*256+256) + 256*10+10
    assert "capture" in out and "batch 8" in out  # the factory's own default batch


def test_inspect_collapses_identical_copies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--model", TINY_GPT, "--batch", "2", "--seq-len", "32")
    assert code == 0
    rows = table_rows(out)
    assert covered_indices(rows) == list(range(10))
    assert "blocks.2 ... blocks.5 (x4)" in out
    assert "blocks.1 " in out  # the traced source block keeps its own row


def test_inspect_hf_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--model", LLAMA, "--seq-len", "32")
    assert code == 0, err
    assert err == ""
    rows = table_rows(out)
    assert covered_indices(rows) == list(range(35))  # embedding, 32 blocks, norm, head
    assert len(rows) < 35  # runs of identical blocks share a row
    assert "8,030,261,248" in out
    assert "heads 32/kv 8" in out and "vocab 128256" in out
    assert "totals:" in out


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--model", LLAMA, "--seq-len", "32", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"summary", "layers"}
    assert data["summary"]["params"] == 8_030_261_248
    assert data["summary"]["input_shapes"][0] == [1, 32]
    assert len(data["layers"]) == data["summary"]["num_layers"] == 35
    assert data["layers"][5]["repeat_of"] is not None
    assert {"name", "fwd_flops", "tp_patterns"} <= set(data["layers"][1])


@pytest.mark.parametrize(("config", "params"), [("gpt2", "124,439,808"),
                                                ("bert-base", "109,514,298")])
def test_inspect_tied_weights_config(capsys: pytest.CaptureFixture[str], config: str,
                                     params: str) -> None:
    """Embedding and head share one matrix: counted once, and the trace must not trip on it."""
    code, out, err = run(capsys, "inspect", "--model", f"{ROOT}/examples/configs/{config}.json",
                         "--seq-len", "32")
    assert code == 0, err
    assert re.search(rf"^\s+params\s+{params}\b", out, re.MULTILINE), out


def test_trace_fallback_warning_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "inspect", "--model", f"{FACTORIES}:export_fails")
    assert code == 0
    assert "module-hooks" in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autopar: warning: torch.export could not")


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--model", "/no/such/models.py:mlp"], ["not found", "models.py"]),
    (["--model", "/no/such/config.json"], ["not found"]),
    (["--model", "examples.models"], ["no ':' separator"]),
    (["--model", f"{FACTORIES}:raises"], ["RuntimeError", "checkpoint not found"]),
    (["--model", f"{FACTORIES}:model_only"], ["only the model"]),
    (["--model", f"{FACTORIES}:shape_mismatch"], ["rejected the example inputs"]),
    (["--model", f"{FACTORIES}:no_params"], ["no parameters"]),
    (["--model", f"{FACTORIES}:untraceable"], ["cannot trace module '1'", "_Branchy"]),
    (["--model", MLP, "--seq-len", "16"], ["seq_len", "--seq-len"]),
])
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                             fragments: list[str]) -> None:
    assert_one_error_line(*run(capsys, "inspect", *argv), *fragments)


@pytest.mark.parametrize("argv", [
    [],
    ["inspect"],
    ["inspect", "--model", MLP, "--batch", "0"],
    ["inspect", "--model", MLP, "--seq-len", "many"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("autopar: error: ") and err.count("\n") == 1 and "--help" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", "--help")
    assert code == 0 and "--model SPEC" in out


def test_python_dash_m_entry_point() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "autopar", "inspect", "--model", "examples/models.py:mlp"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "totals:" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "autopar", "inspect", "--model", "nope"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("autopar: error: ") and bad.stderr.count("\n") == 1


def test_render_aligns_and_checks_widths() -> None:
    text = render(["name", "n"], [["a", "1"], ["bbb", "22"]], footer=[["total", "23"]])
    assert text.splitlines() == ["name    n", "-----  --", "a       1", "bbb    22",
                                 "-----  --", "total  23"]
    with pytest.raises(ValueError, match="2 columns"):
        render(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="align"):
        render(["a", "b"], [["x", "y"]], align="lx")
