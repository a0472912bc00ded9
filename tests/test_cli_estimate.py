"""``autopar estimate`` on the command line: a table, JSON, and one-line errors."""

from __future__ import annotations

import json

import pytest

from autopar.cli import main

TINY = "examples/models.py:tiny_gpt"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_prints_time_memory_and_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "estimate", "--model", TINY, "--cluster", "dgx-a100",
                       "--global-batch", "16", "--dp", "4", "--tp", "2")
    assert code == 0
    for fragment in ("step time", "MFU", "time breakdown", "tp_comm", "memory per device",
                     "fits"):
        assert fragment in out


def test_estimate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "estimate", "--model", TINY, "--cluster", "dgx-h100",
                       "--global-batch", "8", "--dp", "8", "--json")
    data = json.loads(out)
    assert code == 0 and data["step_time"] > 0 and data["fits"] is True
    assert sum(data["breakdown"].values()) == pytest.approx(data["step_time"])


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--cluster", "dgx-z9000", "--global-batch", "8", "--dp", "8"], "dgx-h100"),
    (["--cluster", "dgx-a100", "--global-batch", "8", "--dp", "3"], "cluster has 8"),
    (["--cluster", "dgx-a100", "--global-batch", "12", "--dp", "8"], "multiple of"),
])
def test_estimate_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                      fragment: str) -> None:
    code, _, err = run(capsys, "estimate", "--model", TINY, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("autopar: error:")
    assert fragment in lines[0]


def test_estimate_with_sequence_parallelism(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "estimate", "--model", TINY, "--cluster", "dgx-a100",
                         "--global-batch", "8", "--tp", "8", "--sp", "--json")
    assert code == 0 and err == "" and json.loads(out)["breakdown"]["tp_comm"] > 0
