"""``autopar report``: a plan as one self-contained HTML page, and optionally PNG pictures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autopar.files import write_atomically
from autopar.plan import Plan
from autopar.report_html import render_report


def add_parser(commands: Any) -> None:
    """Register ``report``."""
    p = commands.add_parser(
        "report", help="write a plan as a self-contained HTML page (and PNG pictures)",
        description="Write one HTML page (inline SVG and CSS, nothing fetched) with the "
                    "pipeline timeline, memory per device and the step-time breakdown. "
                    "--png also writes them as PNG files next to it (needs matplotlib: "
                    "pip install 'autopar[report]').")
    p.add_argument("plan", metavar="PLAN.json")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html")
    p.add_argument("--png", action="store_true",
                   help="also write REPORT-timeline.png, REPORT-memory.png, "
                        "REPORT-breakdown.png")
    p.add_argument("--json", action="store_true",
                   help="print the written files as JSON instead of a line each")
    p.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    plan = Plan.load(args.plan)
    html = render_report(plan)
    written = []
    pictures: dict[str, bytes] = {}
    if args.png:
        from autopar.report_png import render_pngs  # matplotlib only when asked for

        pictures = render_pngs(plan)
    write_atomically(args.output, html)
    written.append(args.output)
    out = Path(args.output)
    for name, data in pictures.items():
        path = str(out.with_name(f"{out.stem}-{name}.png"))
        write_atomically(path, data)
        written.append(path)
    if args.json:
        import json

        print(json.dumps({"written": written}))
    else:
        for path in written:
            print(f"wrote {path}", file=sys.stdout)
    return 0
