"""``autopar report``: one self-contained HTML page about a plan (inline SVG and CSS, no
scripts, fonts or images from elsewhere), so it can be mailed, attached to a review or opened
offline.

It shows the pipeline timeline (every micro-batch's forward, backward and sends on every stage,
as the schedule simulator runs them, then the data-parallel sync and optimizer step; idle time
is the bubble), memory per device as stacked bars against capacity, and the step-time
breakdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from autopar.cli_common import GiB, config_text, layer_ranges
from autopar.cli_show import why
from autopar.cost_models.pipeline import StageCost, TimedOp, timeline
from autopar.plan import Plan

OP_COLORS = {"F": "#4c78a8", "B": "#f58518", "W": "#eeca3b", "send": "#9d9d9d",
             "dp_comm": "#b279a2", "optimizer": "#54a24b"}
OP_NAMES = {"F": "forward", "B": "backward", "W": "weight gradient", "send": "send",
            "dp_comm": "data-parallel sync (exposed)", "optimizer": "optimizer step"}
MEMORY_COLORS = {"weights": "#4c78a8", "gradients": "#72b7b2", "optimizer": "#54a24b",
                 "activations": "#f58518", "buffers": "#b279a2", "overhead": "#bab0ac"}
BREAKDOWN_COLORS = {"compute": "#4c78a8", "recompute": "#72b7b2", "tp_comm": "#e45756",
                    "pp_comm": "#9d9d9d", "bubble": "#ff9da6", "dp_comm": "#b279a2",
                    "optimizer": "#54a24b"}


@dataclass(frozen=True)
class Timeline:
    """What the timeline draws: the schedule's ops, then each stage's tail after the
    pipeline drains (exposed data-parallel sync, then the optimizer step)."""

    ops: list[TimedOp]
    pipeline_end: float
    tail: list[tuple[str, float, float]]  # (kind, start, end), the same on every stage
    stages: int

    @property
    def end(self) -> float:
        return max([self.pipeline_end, *(end for _, _, end in self.tail)])


def plan_timeline(plan: Plan) -> Timeline:
    """Simulate the plan's schedule with its stored per-chunk costs."""
    chunks = sorted((ch for st in plan.stages for ch in st.chunks), key=lambda ch: ch.chunk)
    costs = [StageCost(forward=ch.forward_s, backward=ch.backward_s, send=ch.send_s)
             for ch in chunks]
    mb = plan.micro_batching
    ops = timeline(costs, mb.micro_batches, mb.schedule, mb.virtual_stages)
    end = max(op.end for op in ops)
    tail = []
    t = end
    for kind in ("dp_comm", "optimizer"):
        length = plan.estimate.breakdown.get(kind, 0.0)
        if length > 0:
            tail.append((kind, t, t + length))
            t += length
    return Timeline(ops=ops, pipeline_end=end, tail=tail, stages=len(plan.stages))


def _fmt_time(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.0f} µs"


def _ticks(end: float, count: int = 8) -> list[float]:
    """Round axis positions from 0 to ``end``, about ``count`` of them."""
    if end <= 0:
        return [0.0]
    raw = end / count
    exponent = math.floor(math.log10(raw))
    step = next(b * 10**exponent for b in (1, 2, 2.5, 5, 10) if b * 10**exponent >= raw)
    return [i * step for i in range(int(end / step + 1e-9) + 1)]


def timeline_svg(plan: Plan, tl: Timeline) -> str:
    """The pipeline timeline: one row per stage, time left to right."""
    left, top, width, row, gap = 110, 30, 980, 34, 14
    height = top + tl.stages * (row + gap) + 40
    scale = width / tl.end if tl.end > 0 else 1.0
    parts = [f'<svg class="timeline" viewBox="0 0 {left + width + 20} {height}" '
             f'width="{left + width + 20}" height="{height}" role="img" '
             f'aria-label="pipeline timeline">']
    for s in range(tl.stages):
        y = top + s * (row + gap)
        st = plan.stages[s]
        parts.append(f'<rect class="lane" x="{left}" y="{y}" width="{width:.1f}" '
                     f'height="{row}" />')
        parts.append(f'<text class="label" x="{left - 8}" y="{y + row / 2 - 2}" '
                     f'text-anchor="end">stage {s}</text>')
        parts.append(f'<text class="sublabel" x="{left - 8}" y="{y + row / 2 + 11}" '
                     f'text-anchor="end">{escape(st.device)}</text>')
    for t in _ticks(tl.end):
        x = left + t * scale
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" '
                     f'y2="{height - 34}" />')
        parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 18}" '
                     f'text-anchor="middle">{_fmt_time(t)}</text>')
    bar = row - 10  # compute bars; sends run in the 8 px strip below them
    for op in tl.ops:
        y = top + op.device * (row + gap)
        x, w = left + op.start * scale, max((op.end - op.start) * scale, 0.5)
        what = OP_NAMES[op.kind]
        thin = "" if w >= 4 else ' stroke="none"'
        chunk = f", chunk {op.chunk}" if plan.micro_batching.virtual_stages > 1 else ""
        title = (f"stage {op.device}{chunk}: {what} of micro-batch {op.micro_batch}, "
                 f"{_fmt_time(op.start)} to {_fmt_time(op.end)}")
        parts.append(f'<rect class="op op-{op.kind}" data-stage="{op.device}" '
                     f'data-mb="{op.micro_batch}" data-chunk="{op.chunk}" '
                     f'x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar}" '
                     f'fill="{OP_COLORS[op.kind]}"{thin}><title>{escape(title)}</title></rect>')
        if w >= 14:
            parts.append(f'<text class="mb" x="{x + w / 2:.2f}" y="{y + bar / 2 + 4}" '
                         f'text-anchor="middle">{op.micro_batch}</text>')
        if op.send > 0:
            sx, sw = left + op.end * scale, max(op.send * scale, 0.5)
            parts.append(f'<rect class="send" x="{sx:.2f}" y="{y + bar + 2}" '
                         f'width="{sw:.2f}" height="6" fill="{OP_COLORS["send"]}">'
                         f'<title>send of micro-batch {op.micro_batch} from stage '
                         f'{op.device}: {_fmt_time(op.send)}</title></rect>')
    for s in range(tl.stages):
        y = top + s * (row + gap)
        for kind, start, end in tl.tail:
            x, w = left + start * scale, max((end - start) * scale, 0.5)
            parts.append(f'<rect class="tail tail-{kind}" x="{x:.2f}" y="{y}" '
                         f'width="{w:.2f}" height="{bar}" fill="{OP_COLORS[kind]}">'
                         f'<title>{OP_NAMES[kind]}: {_fmt_time(end - start)}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def memory_svg(plan: Plan) -> str:
    """Memory per device of each stage, stacked by kind, against its capacity."""
    left, top, bar, gap, width = 110, 10, 26, 12, 700
    n = len(plan.stages)
    height = top + n * (bar + gap) + 34
    most = max(max(st.capacity, sum(st.memory.values())) for st in plan.stages)
    scale = width / most
    parts = [f'<svg class="memory" viewBox="0 0 {left + width + 150} {height}" '
             f'width="{left + width + 150}" height="{height}" role="img" '
             f'aria-label="memory per device">']
    for i, st in enumerate(plan.stages):
        y = top + i * (bar + gap)
        parts.append(f'<text class="label" x="{left - 8}" y="{y + bar / 2 + 4}" '
                     f'text-anchor="end">stage {st.stage}</text>')
        x = float(left)
        for kind, value in st.memory.items():
            w = value * scale
            parts.append(f'<rect class="mem mem-{kind}" x="{x:.2f}" y="{y}" width="{w:.2f}" '
                         f'height="{bar}" fill="{MEMORY_COLORS.get(kind, "#888")}"><title>'
                         f'{kind}: {value / GiB:.2f} GiB</title></rect>')
            x += w
        cap = left + st.capacity * scale
        parts.append(f'<line class="capacity" x1="{cap:.2f}" y1="{y - 4}" x2="{cap:.2f}" '
                     f'y2="{y + bar + 4}" />')
        total = sum(st.memory.values())
        parts.append(f'<text class="value" x="{max(x, cap) + 8:.2f}" y="{y + bar / 2 + 4}">'
                     f'{total / GiB:.1f} / {st.capacity / GiB:.0f} GiB</text>')
    for gib in _ticks(most / GiB, 6):
        x = left + gib * GiB * scale
        parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 8}" '
                     f'text-anchor="middle">{gib:g} GiB</text>')
    parts.append("</svg>")
    return "".join(parts)


def breakdown_svg(plan: Plan) -> str:
    """The step time as one stacked bar, part by part."""
    e = plan.estimate
    left, width, bar = 10, 1060, 30
    scale = width / e.step_time
    parts = [f'<svg class="breakdown" viewBox="0 0 {left + width + 10} {bar + 8}" '
             f'width="{left + width + 10}" height="{bar + 8}" role="img" '
             f'aria-label="step time breakdown">']
    x = float(left)
    for kind, value in e.breakdown.items():
        if value <= 0:
            continue
        w = value * scale
        parts.append(f'<rect class="part part-{kind}" x="{x:.2f}" y="4" width="{w:.2f}" '
                     f'height="{bar}" fill="{BREAKDOWN_COLORS.get(kind, "#888")}"><title>'
                     f'{kind}: {_fmt_time(value)} ({100 * value / e.step_time:.1f}%)'
                     f'</title></rect>')
        if w > 60:
            parts.append(f'<text class="inbar" x="{x + w / 2:.2f}" y="{bar / 2 + 8}" '
                         f'text-anchor="middle">{kind} {100 * value / e.step_time:.0f}%'
                         f'</text>')
        x += w
    parts.append("</svg>")
    return "".join(parts)


def _legend(colors: dict[str, str], names: dict[str, str] | None = None) -> str:
    items = "".join(f'<span class="key"><i style="background:{c}"></i>'
                    f'{escape((names or {}).get(k, k))}</span>' for k, c in colors.items())
    return f'<div class="legend">{items}</div>'


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
margin:24px auto;max-width:1180px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid
#ddd;padding-bottom:4px}p.sub{color:#555;margin:0 0 14px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:19px}.card span{color:#666;font-size:12px}
.fit{color:#2e7d32}.nofit{color:#c62828}
svg text{font:12px system-ui,sans-serif;fill:#333}svg text.sublabel{fill:#777;font-size:10px}
svg text.mb{fill:#fff;font-size:10px}svg text.inbar{fill:#fff;font-size:12px}
svg text.axis{fill:#666;font-size:11px}svg .lane{fill:#fbe3e6}
svg .tick{stroke:#e2e2e2;stroke-width:1}svg .capacity{stroke:#c62828;stroke-width:2;
stroke-dasharray:4 3}svg .op{stroke:#fff;stroke-width:.6}
.legend{margin:4px 0 8px;color:#444;font-size:12px}.key{margin-right:16px;white-space:nowrap}
.key i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-2px;
border-radius:2px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}td,th{padding:3px 10px;
border-bottom:1px solid #eee;text-align:right;vertical-align:top}th{background:#fafafa}
td.l,th.l{text-align:left}.scroll{overflow-x:auto}
ul.why{padding-left:20px;margin:6px 0}
"""


def render_report(plan: Plan) -> str:
    """The whole page."""
    e, c = plan.estimate, plan.config
    tl = plan_timeline(plan)
    name = escape(str(plan.model.get("name", "model")))
    fit = ('<b class="fit">fits</b>' if e.fits else '<b class="nofit">does not fit</b>')
    cards = [(f"{e.step_time:.3f} s", "step time"), (f"{100 * e.mfu:.1f}%", "MFU"),
             (f"{e.tokens_per_s:,.0f}", "tokens/s"),
             (f"{e.peak_memory / GiB:.1f} / {e.capacity / GiB:.0f} GiB", "peak memory")]
    card_html = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>'
                        for v, k in cards)
    card_html += f'<div class="card">{fit}<span>memory</span></div>'
    mb = plan.micro_batching
    bubble = e.breakdown.get("bubble", 0.0)
    stage_rows = "".join(
        f'<tr><td>{st.stage}</td><td>{st.ranks[0]}-{st.ranks[-1]}</td>'
        f'<td class="l">{escape(st.node_group)} ({escape(st.device)})</td>'
        f'<td>{len(st.layers)}</td><td class="l">{escape(layer_ranges(st.layers))}</td>'
        f'<td>{st.time_s:.3f}</td><td>{sum(st.memory.values()) / GiB:.1f}</td></tr>'
        for st in plan.stages)
    breakdown_rows = "".join(
        f'<tr><td class="l"><span class="key"><i style="background:'
        f'{BREAKDOWN_COLORS.get(k, "#888")}"></i>{k}</span></td><td>{v:.4f}</td>'
        f'<td>{100 * v / e.step_time:.1f}%</td></tr>' for k, v in e.breakdown.items())
    why_items = "".join(f"<li>{escape(line.strip())}</li>" for line in why(plan)[1:])
    solver = plan.solver
    proof = ("proven optimal under the cost model" if solver.optimal else
             f"best found in the time limit, within {100 * solver.gap:.1f}% of optimal")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>autopar plan: {name}</title><style>{_CSS}</style></head><body>
<h1>{name} on {escape(plan.cluster.name)}</h1>
<p class="sub">{escape(plan.cluster.summary())}<br>global batch {plan.global_batch_size},
{escape(plan.precision)}, {escape(plan.optimizer)} &middot; {escape(config_text(c))}
&middot; {escape(proof)}</p>
<div class="cards">{card_html}</div>

<h2>Pipeline timeline</h2>
<p class="sub">{c.pp} stage(s), {mb.micro_batches} micro-batches of {mb.micro_batch_size}
per replica, {escape(mb.schedule)} schedule{f", {mb.virtual_stages} chunks per device"
if mb.virtual_stages > 1 else ""}. Each bar is one micro-batch (its number inside when it
fits); grey strips under them are sends to the next stage; pink lane is idle time
(the bubble: {_fmt_time(bubble)}, {100 * bubble / e.step_time:.1f}% of the step). Hover a
bar for details.</p>
{_legend({**{k: OP_COLORS[k] for k in ("F", "B", "W", "send", "dp_comm", "optimizer")},
          "idle": "#fbe3e6"}, {**OP_NAMES, "idle": "idle (bubble)"})}
<div class="scroll">{timeline_svg(plan, tl)}</div>

<h2>Memory per device</h2>
<p class="sub">Peak bytes on each device of a stage (all devices of a stage hold the same);
the dashed red line is the device's capacity.</p>
{_legend(MEMORY_COLORS)}
<div class="scroll">{memory_svg(plan)}</div>

<h2>Step time breakdown</h2>
<div class="scroll">{breakdown_svg(plan)}</div>
<table><tr><th class="l">part</th><th>seconds</th><th>share</th></tr>{breakdown_rows}
<tr><th class="l">step</th><th>{e.step_time:.4f}</th><th>100%</th></tr></table>

<h2>Stages</h2>
<table><tr><th>stage</th><th>ranks</th><th class="l">devices</th><th>layers</th>
<th class="l">layer names</th><th>busy s</th><th>memory GiB</th></tr>{stage_rows}</table>

<h2>Why this plan</h2>
<ul class="why">{why_items or "<li>no runners-up were recorded</li>"}</ul>
</body></html>
"""
