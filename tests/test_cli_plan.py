"""``autopar plan`` -> ``show`` -> ``report``, ``compare`` and ``schema`` on the command line;
the HTML report rendered in a real headless browser; one-line errors, no half-written files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autopar.cli import main
from autopar.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
LLAMA = f"{ROOT}/examples/configs/llama-3-8b.json"
TINY = f"{ROOT}/examples/models.py:tiny_gpt"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, out: str, err: str, fragment: str = "") -> None:
    """Exit 2, nothing on stdout, one error line last on stderr (after any progress lines)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("autopar: error: ")]
    assert code == 2 and out == "" and len(errors) == 1 and lines[-1] == errors[0], err
    assert fragment in errors[0], err
    assert "Traceback" not in err


@cache
def llama_plan(directory: str) -> Path:
    """``autopar plan`` on the bundled Llama-3-8B config, 4 pipeline stages on one DGX A100."""
    path = Path(directory) / "plan.json"
    code = main(["plan", "--model", LLAMA, "--seq-len", "1024", "--cluster", "dgx-a100-40gb",
                 "--global-batch", "16", "--pp", "4", "--schedule", "1f1b", "--time-limit", "3",
                 "-q", "-o", str(path)])
    assert code == 0
    return path


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_plan(str(tmp_path_factory.mktemp("plan")))


class _Bars(HTMLParser):
    """Counts the timeline's op rects per (stage, kind) and the SVGs of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: dict[tuple[int, str], list[int]] = {}
        self.svgs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self.svgs.append(a.get("class") or "")
        if tag in ("script", "img", "link", "iframe") or any(
                (v or "").startswith(("http:", "https:", "//")) for k, v in attrs
                if k in ("src", "href")):
            self.external.append(tag)
        classes = (a.get("class") or "").split()
        if tag == "rect" and "op" in classes:
            kind = next(c[3:] for c in classes if c.startswith("op-"))
            self.bars.setdefault((int(a["data-stage"] or 0), kind), []).append(
                int(a["data-mb"] or 0))


@pytest.mark.slow
def test_plan_show_report_on_llama(plan_file: Path, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    plan = Plan.load(plan_file)
    assert plan.config.pp == 4 and plan.world_size == 8
    code, out, _ = run(capsys, "show", str(plan_file))
    assert code == 0
    for fragment in ("stages:", "model.layers.", "time breakdown", "memory per device",
                     "why this plan", "mesh       pp 4"):
        assert fragment in out
    code, out, _ = run(capsys, "show", str(plan_file), "--json")
    assert code == 0 and json.loads(out) == json.loads(plan_file.read_text())

    report = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", str(plan_file), "-o", str(report), "--png")
    assert code == 0 and report.exists()
    for name in ("timeline", "memory", "breakdown"):
        png = tmp_path / f"report-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = _Bars()
    page.feed(report.read_text())
    assert page.external == []  # self-contained: no scripts, images or links to fetch
    assert {"timeline", "memory", "breakdown"} <= set(page.svgs)
    m = plan.micro_batching.micro_batches
    for stage in range(plan.config.pp):  # one forward and one backward bar per micro-batch
        for kind in ("F", "B"):
            assert sorted(page.bars[(stage, kind)]) == list(range(m))


_PROBE = """<script>
const out = {};
for (const r of document.querySelectorAll('rect.op')) {
  const box = r.getBoundingClientRect();
  if (box.width <= 0 || box.height <= 0) continue;
  const key = r.dataset.stage + ':' + r.classList[1];
  (out[key] = out[key] || []).push(+r.dataset.mb);
}
const pre = document.createElement('pre'); pre.id = 'probe';
pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
</script></body>"""


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium: apt-get install chromium (.ci/run does)")
def test_report_renders_in_a_browser(plan_file: Path, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    """Headless Chromium lays the page out; every micro-batch's bars are drawn, with a size,
    on every stage."""
    report = tmp_path / "report.html"
    assert run(capsys, "report", str(plan_file), "-o", str(report))[0] == 0
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE))
    assert BROWSER is not None
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                          "--window-size=1240,1600", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, dom[-500:]
    drawn = json.loads(match[1].replace("&quot;", '"'))
    plan = Plan.load(plan_file)
    m = plan.micro_batching.micro_batches
    for stage in range(plan.config.pp):
        for kind in ("op-F", "op-B"):
            assert sorted(drawn[f"{stage}:{kind}"]) == list(range(m))


def test_plan_small_model_json_and_progress(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "tiny.json"
    code, out, err = run(capsys, "plan", "--model", TINY, "--cluster", "dgx-a100",
                         "--global-batch", "16", "--max-tp", "2", "--recompute", "none,full",
                         "--headroom", "0.1", "-o", str(out_file), "--json")
    assert code == 0
    assert json.loads(out) == json.loads(out_file.read_text())
    assert "autopar: tracing" in err and "plan saved" in err
    plan = Plan.load(out_file)
    assert plan.config.tp <= 2 and plan.estimate.fits
    code, out, err = run(capsys, "plan", "--model", TINY, "--cluster", "dgx-a100",
                         "--global-batch", "16", "--tp", "2", "--no-sp", "-q")
    assert code == 0 and err == "" and "plan for TinyGPT" in out and "tp=2 " in out


def test_compare_configs_and_plan_files(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / "p.json"
    assert run(capsys, "plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "16",
               "-q", "-o", str(plan_path))[0] == 0
    code, out, _ = run(capsys, "compare", str(plan_path), "--model", TINY, "--cluster",
                       "dgx-a100", "--global-batch", "16", "--config", "tp=2",
                       "--config", "pp=2,schedule=gpipe,mb=2")
    assert code == 0
    assert "[1] tp=2" in out and "[3] " in out and "step time ms" in out and "*" in out
    assert "8x1x1x1" in out or "4x2x1x1" in out
    code, out, _ = run(capsys, "compare", "--model", TINY, "--cluster", "dgx-a100",
                       "--global-batch", "16", "--config", "tp=8,sp", "--json")
    data = json.loads(out)
    assert code == 0 and data[0]["config"]["sequence_parallel"] is True


def test_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "Plan" and "stages" in schema["properties"]


def test_help_of_each_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("plan", "show", "compare", "report", "schema"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "--json" in out


@pytest.mark.parametrize(("argv", "fragment"), [
    (["show", "/no/such/plan.json"], "does not exist"),
    (["report", "/no/such/plan.json", "-o", "{tmp}/r.html"], "does not exist"),
    (["show", "{tmp}/garbage.json"], "not JSON"),
    (["plan", "--model", TINY, "--cluster", "dgx-z9000", "--global-batch", "8"], "dgx-z9000"),
    (["plan", "--model", TINY, "--cluster", "/no/such/cluster.toml", "--global-batch", "8"],
     "does not exist"),
    (["plan", "--model", "/no/such/models.py:f", "--cluster", "dgx-a100", "--global-batch",
      "8"], "not found"),
    (["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8", "--tp", "4",
      "--max-tp", "2"], "max_tp"),
    (["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8", "-o",
      "/no/such/dir/plan.json", "-q"], "does not exist"),
    (["compare", "--config", "tp=2"], "--model"),
    (["compare", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8",
      "--config", "tp=two"], "whole number"),
    (["compare", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8",
      "--config", "colour=red"], "unknown key"),
    (["compare"], "nothing to compare"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     argv: list[str], fragment: str) -> None:
    (tmp_path / "garbage.json").write_text("this is not json")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    one_error_line(*run(capsys, *argv), fragment)
    assert not (tmp_path / "r.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.json"]  # nothing half-written


@pytest.mark.parametrize("argv", [
    ["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8", "--tp", "0"],
    ["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8",
     "--recompute", "sometimes"],
    ["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8", "--headroom", "2"],
    ["plan", "--model", TINY, "--cluster", "dgx-a100", "--global-batch", "8",
     "--time-limit", "-1"],
    ["report", "x.json"],
])
def test_malformed_pins_are_usage_errors(capsys: pytest.CaptureFixture[str],
                                         argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("autopar: error: ") and err.count("\n") == 1
