"""Published H100 runs nobody fitted to (benchmarks/data/published_h100.json): within 10%, fitting.

NVIDIA's BF16 pre-training results for Llama 3.1 8B/70B/405B and GPT-3 175B (NeMo, DGX H100)
are predicted with the bundled ``dgx-h100`` profile and the cost models as calibrated on the
A100 runs only; benchmarks/external.py prints the same comparison as a table. This is the
acceptance check that the models generalise beyond their calibration set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import external  # noqa: E402

RUNS = external.load_runs()


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=[r["id"] for r in RUNS])
def test_external_run_is_predicted_within_10_percent_and_fits(run: dict) -> None:
    row = external.compare(run)
    assert "error" not in row, row.get("error")
    assert abs(row["err"]) <= 0.10, (
        f"tokens/s/GPU: published {row['pub_tokens']:.0f}, predicted {row['pred_tokens']:.0f}")
    est = row["est"]
    assert est.fits, f"predicted {est.peak_memory / 2**30:.1f} GiB of {est.capacity / 2**30:.0f}"
