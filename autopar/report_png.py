"""The report's pictures as PNG, drawn with matplotlib (``pip install 'autopar[report]'``)."""

from __future__ import annotations

import io
from typing import Any

from autopar.cli_common import GiB
from autopar.errors import AutoparError
from autopar.plan import Plan
from autopar.report_html import (
    BREAKDOWN_COLORS,
    MEMORY_COLORS,
    OP_COLORS,
    OP_NAMES,
    plan_timeline,
)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AutoparError("--png needs matplotlib: pip install 'autopar[report]' (the HTML "
                           "report itself needs nothing)") from None
    return plt


def render_pngs(plan: Plan) -> dict[str, bytes]:
    """``{"timeline": png, "memory": png, "breakdown": png}``."""
    plt = _pyplot()
    out = {}
    for name, draw in (("timeline", _timeline), ("memory", _memory),
                       ("breakdown", _breakdown)):
        fig = draw(plt, plan)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                    metadata={"Software": None})
        plt.close(fig)
        out[name] = buffer.getvalue()
    return out


def _timeline(plt: Any, plan: Plan) -> Any:
    tl = plan_timeline(plan)
    fig, ax = plt.subplots(figsize=(12, 0.55 * tl.stages + 1.4))
    for op in tl.ops:
        ax.barh(op.device, op.end - op.start, left=op.start, height=0.7,
                color=OP_COLORS[op.kind], edgecolor="white", linewidth=0.4)
        if op.send > 0:
            ax.barh(op.device + 0.42, op.send, left=op.end, height=0.12,
                    color=OP_COLORS["send"])
    for s in range(tl.stages):
        for kind, start, end in tl.tail:
            ax.barh(s, end - start, left=start, height=0.7, color=OP_COLORS[kind])
    ax.set_yticks(range(tl.stages), [f"stage {s}" for s in range(tl.stages)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_xlim(0, tl.end)
    ax.set_title("pipeline timeline")
    handles = [plt.Rectangle((0, 0), 1, 1, color=OP_COLORS[k]) for k in OP_COLORS]
    ax.legend(handles, [OP_NAMES[k] for k in OP_COLORS], loc="upper center",
              bbox_to_anchor=(0.5, -0.25), ncol=6, frameon=False, fontsize=8)
    return fig


def _memory(plt: Any, plan: Plan) -> Any:
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(plan.stages) + 1.4))
    for st in plan.stages:
        left = 0.0
        for kind, value in st.memory.items():
            ax.barh(st.stage, value / GiB, left=left, color=MEMORY_COLORS.get(kind, "#888"),
                    label=kind if st.stage == 0 else None)
            left += value / GiB
        ax.plot([st.capacity / GiB] * 2, [st.stage - 0.45, st.stage + 0.45], color="#c62828",
                linestyle="--", label="capacity" if st.stage == 0 else None)
    ax.set_yticks([st.stage for st in plan.stages], [f"stage {st.stage}" for st in plan.stages])
    ax.invert_yaxis()
    ax.set_xlabel("GiB per device")
    ax.set_title("memory per device")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=7, frameon=False,
              fontsize=8)
    return fig


def _breakdown(plt: Any, plan: Plan) -> Any:
    e = plan.estimate
    fig, ax = plt.subplots(figsize=(10, 1.6))
    left = 0.0
    for kind, value in e.breakdown.items():
        if value > 0:
            ax.barh(0, value, left=left, color=BREAKDOWN_COLORS.get(kind, "#888"),
                    label=f"{kind} {100 * value / e.step_time:.1f}%")
            left += value
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    ax.set_title(f"step time {e.step_time:.3f} s")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=7, frameon=False,
              fontsize=8)
    return fig
