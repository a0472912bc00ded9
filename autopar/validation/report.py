"""The validation report: predicted against measured, per layer and per stage, with errors;
and ``updated_profile``, which folds the measurements back into a device profile.

An error is ``(predicted - measured) / measured``: +10% means the model predicted 10% too much.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field, computed_field

from autopar.cluster import DeviceProfile
from autopar.cost_models.compute import SUSTAINED_GEMM_FRACTION
from autopar.table import render


def relative_error(predicted: float, measured: float) -> float | None:
    return (predicted - measured) / measured if measured > 0 else None


class Compared(BaseModel):
    """A row of predicted and measured time and peak memory, with the two errors."""

    model_config = ConfigDict(frozen=True)

    def times(self) -> tuple[float, float]:
        """(predicted, measured) seconds."""
        raise NotImplementedError

    def peaks(self) -> tuple[float, float]:
        """(predicted, measured) bytes."""
        raise NotImplementedError

    @computed_field  # type: ignore[prop-decorator]
    @property
    def time_error(self) -> float | None:
        return relative_error(*self.times())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def peak_error(self) -> float | None:
        return relative_error(*self.peaks())


class LayerRow(Compared):
    """One layer of one stage in one recomputation mode, for one micro-batch on one rank."""

    stage: int
    index: int
    layer: str
    mode: str
    planned: bool = Field(description="the plan's own recomputation mode for this layer")
    measured_as: str = Field(description="the layer actually run (identical layers run once)")
    predicted_forward_s: float
    measured_forward_s: float
    predicted_backward_s: float
    measured_backward_s: float
    predicted_saved_bytes: float
    measured_saved_bytes: float
    predicted_peak_bytes: float
    measured_peak_bytes: float
    predicted_arithmetic_s: float
    predicted_memory_s: float

    def times(self) -> tuple[float, float]:
        """Of forward + backward."""
        return (self.predicted_forward_s + self.predicted_backward_s,
                self.measured_forward_s + self.measured_backward_s)

    def peaks(self) -> tuple[float, float]:
        return self.predicted_peak_bytes, self.measured_peak_bytes


class StageRow(Compared):
    """One pipeline stage's rank: its layers chained in their planned modes."""

    stage: int
    layers: int
    micro_batches_held: int = Field(description="in flight at the stage's peak, per chunk")
    predicted_time_s: float = Field(description="compute per micro-batch, forward + backward")
    measured_time_s: float
    predicted_peak_bytes: float = Field(description="activations held at the peak + gradients")
    measured_peak_bytes: float

    def times(self) -> tuple[float, float]:
        return self.predicted_time_s, self.measured_time_s

    def peaks(self) -> tuple[float, float]:
        return self.predicted_peak_bytes, self.measured_peak_bytes


class ValidationReport(BaseModel):
    """Everything ``autopar validate`` measured, with what was predicted."""

    model_config = ConfigDict(frozen=True)

    device: str = Field(description="where it was measured (torch device and its name)")
    profile: str = Field(description="the device profile the predictions used")
    precision: str
    notes: list[str] = Field(default_factory=list)
    layers: list[LayerRow]
    stages: list[StageRow]

    def planned_rows(self) -> list[LayerRow]:
        return [row for row in self.layers if row.planned]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> dict[str, float | None]:
        """Mean absolute and worst errors over the planned rows."""
        rows = self.planned_rows()
        out: dict[str, float | None] = {}
        for key in ("time_error", "peak_error"):
            errors = [e for e in (getattr(r, key) for r in rows) if e is not None]
            out[f"{key}_mean_abs"] = statistics.fmean(abs(e) for e in errors) if errors else None
            out[f"{key}_worst"] = max(errors, key=abs) if errors else None
        return out

    def table(self) -> str:
        """The report as text: a header, the layer table, the stage table, the summary."""
        layer_rows = [[str(r.stage), r.layer + ("" if r.measured_as == r.layer else
                                                 f" (= {r.measured_as})"),
                       r.mode + ("*" if r.planned else ""),
                       _ms(r.predicted_forward_s), _ms(r.measured_forward_s),
                       _ms(r.predicted_backward_s), _ms(r.measured_backward_s),
                       percent(r.time_error), _mb(r.predicted_saved_bytes),
                       _mb(r.measured_saved_bytes), _mb(r.predicted_peak_bytes),
                       _mb(r.measured_peak_bytes), percent(r.peak_error)]
                      for r in self.layers]
        layers = render(["stage", "layer", "recompute", "fwd ms pred", "fwd ms meas",
                         "bwd ms pred", "bwd ms meas", "time err", "saved MB pred",
                         "saved MB meas", "peak MB pred", "peak MB meas", "peak err"],
                        layer_rows, align="rllrrrrrrrrrr")
        stage_rows = [[str(s.stage), str(s.layers), str(s.micro_batches_held),
                       _ms(s.predicted_time_s), _ms(s.measured_time_s), percent(s.time_error),
                       _mb(s.predicted_peak_bytes), _mb(s.measured_peak_bytes),
                       percent(s.peak_error)] for s in self.stages]
        stages = render(["stage", "layers", "held", "ms pred", "ms meas", "time err",
                         "peak MB pred", "peak MB meas", "peak err"], stage_rows,
                        align="rrrrrrrrr")
        s = self.summary
        lines = [f"validated on {self.device} against profile {self.profile} ({self.precision});"
                 f" per micro-batch, one rank; * = the plan's recomputation mode", "",
                 layers, "", "stages (planned modes, layers chained):", stages, "",
                 f"planned rows: time error mean {percent(s['time_error_mean_abs'], sign=False)}, "
                 f"worst {percent(s['time_error_worst'])}; peak memory error mean "
                 f"{percent(s['peak_error_mean_abs'], sign=False)}, worst "
                 f"{percent(s['peak_error_worst'])}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}"


def percent(value: float | None, sign: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f}%" if sign else f"{value * 100:.1f}%"


def updated_profile(report: ValidationReport, device: DeviceProfile) -> DeviceProfile:
    """``device`` with its sustained fraction and memory efficiency refitted to the report.

    Each measured forward+backward time is modelled as ``a * arithmetic + b * memory``, the
    two parts of the prediction; ``a`` and ``b`` are the least-squares fit (non-negative,
    weighted by relative error so small layers count as much as large ones). Arithmetic-bound
    kernels then run at ``1/a`` of the old sustained fraction and memory-bound ones at ``1/b``
    of the old memory efficiency (both capped at 1).
    """
    rows = [(r.predicted_arithmetic_s, r.predicted_memory_s,
             r.measured_forward_s + r.measured_backward_s) for r in report.layers
            if r.measured_forward_s + r.measured_backward_s > 0]
    a, b = _fit_two(rows)
    sustained = device.sustained_fraction or SUSTAINED_GEMM_FRACTION
    update: dict[str, object] = {}
    if a != 1.0:
        update["sustained_fraction"] = min(2.0, float(f"{sustained / a:.3g}"))
    if b != 1.0:
        update["memory_efficiency"] = _faster(device.memory_efficiency, b)
        if device.memory_efficiency_by_bytes is not None:
            update["memory_efficiency_by_bytes"] = [
                (x, _faster(y, b)) for x, y in device.memory_efficiency_by_bytes]
    sources = dict(device.sources)
    for key in update:
        sources[key] = (f"[measured] refitted by `autopar validate --update-profile` on "
                        f"{report.device} from {len(rows)} layer runs")
    update["sources"] = sources
    return DeviceProfile.model_validate({**device.model_dump(), **update})


def _faster(efficiency: float, factor: float) -> float:
    """``efficiency`` of a kernel that took ``factor`` times the predicted time, in (0, 1]."""
    return min(1.0, max(1e-4, float(f"{efficiency / factor:.3g}")))


def _fit_two(rows: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Non-negative least squares of ``y ~ a*x1 + b*x2`` in relative terms (rows / y)."""
    s11 = s12 = s22 = t1 = t2 = 0.0
    for x1, x2, y in rows:
        x1, x2 = x1 / y, x2 / y
        s11, s12, s22 = s11 + x1 * x1, s12 + x1 * x2, s22 + x2 * x2
        t1, t2 = t1 + x1, t2 + x2
    det = s11 * s22 - s12 * s12
    if det > 1e-12 * max(s11 * s22, 1e-300):
        a, b = (t1 * s22 - t2 * s12) / det, (t2 * s11 - t1 * s12) / det
        if a > 0 and b > 0:
            return a, b
    # A coefficient would come out non-positive, or the two parts are proportional in every
    # row (one distinct layer, say) and cannot be told apart. Candidates: keep one part as it
    # was (coefficient 1) and fit the other to what is left, or scale both alike; the one
    # with the least residual among those with positive coefficients wins.
    candidates = [(1.0, 1.0)]
    if s11 > 0:
        candidates.append((sum(x1 / y * (1 - x2 / y) for x1, x2, y in rows) / s11, 1.0))
    if s22 > 0:
        candidates.append((1.0, sum(x2 / y * (1 - x1 / y) for x1, x2, y in rows) / s22))
    both = s11 + 2 * s12 + s22
    if both > 0:
        common = (t1 + t2) / both
        candidates.append((common, common))

    def residual(ab: tuple[float, float]) -> float:
        return sum((1 - (ab[0] * x1 + ab[1] * x2) / y) ** 2 for x1, x2, y in rows)
    return min((c for c in candidates if c[0] > 0 and c[1] > 0), key=residual)
