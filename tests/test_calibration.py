"""Published DGX A100 training runs (../shared/calibration): predicted within 10%, and fitting.

The bundled DGX A100 profile and the cost models are used as they are, with no per-run tuning;
benchmarks/accuracy.py prints the same comparison as a table. One constant was fitted to these
runs (``SUSTAINED_GEMM_FRACTION``), so this test guards against regressions; how well the
models generalise is measured on runs nobody fitted to, in benchmarks/external.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import accuracy  # noqa: E402

RUNS = accuracy.load_runs() if accuracy.CALIBRATION.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not RUNS, reason="../shared/calibration is not beside the repository")
@pytest.mark.parametrize("run", RUNS, ids=[r["id"] for r in RUNS])
def test_published_run_is_predicted_within_10_percent_and_fits(run: dict) -> None:
    metric, published, predicted, est = accuracy.compare(run)
    assert abs(accuracy.throughput_error(metric, published, predicted)) <= 0.10, (
        f"{metric}: published {published}, predicted {predicted:.2f}")
    assert est.fits, f"predicted {est.peak_memory / 2**30:.1f} GiB of {est.capacity / 2**30:.0f}"
