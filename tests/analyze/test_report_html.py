"""`fmdiag analyze --html`: the page opens in a real headless Chromium, offline, every figure drawn.

A plotly figure can be written and still not render (a bad trace property only fails in the
browser), so these tests load the file in Chromium and look for the SVG plotly draws, collect
console and page errors, and block the network to prove the file needs none. Chromium is a
requirement here, not an option (.ci/run installs it): a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from analyze.helpers import SAMPLES
from click.testing import CliRunner
from playwright.sync_api import Browser, sync_playwright

from fmdiag.analyzers.cli import analyze
from fmdiag.analyzers.pipeline import Analysis, Options
from fmdiag.analyzers.readers.coverage import StepsCoverage
from fmdiag.analyzers.reports import report_html, report_json

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MAX_BYTES = 15 * 2**20
BASE = ("fig-heatmap", "fig-breakdown", "fig-timeline", "fig-lost")
#: A reference to anything outside the file: a script or stylesheet fetched from the network.
REMOTE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} not found: the HTML report test needs Chromium (apt-get install chromium; .ci/run does)"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield b
        b.close()


def check_file(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    assert 0 < len(text.encode()) < MAX_BYTES
    assert not REMOTE.search(text), REMOTE.search(text)
    assert text.count("* plotly.js v") == 1  # the bundle inlined once, not per figure
    return text


def has(text: str, *needles: str) -> list[str]:
    """The needles missing from ``text`` (an ``in`` on a 5 MB page makes pytest's failure diff crawl)."""
    return [n for n in needles if n not in text]


def open_report(browser: Browser, path: Path, shot: Path) -> dict[str, Any]:
    """Load the page with the network blocked; figure id -> drawn, plus errors and requests."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    remote: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def block(route: Any) -> None:
        remote.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(https?|wss?)://"), block)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.plotly-graph-div')]"
        ".every(e => e.querySelector('.main-svg') !== null)",
        timeout=60_000,
    )
    drawn = page.eval_on_selector_all(
        ".plotly-graph-div",
        "els => Object.fromEntries(els.map(e => [e.id, e.matches('.js-plotly-plot') "
        "&& e.querySelectorAll('.main-svg').length > 0]))",
    )
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    assert shot.stat().st_size > 0
    if os.environ.get("FMDIAG_ARTIFACTS"):
        out = Path(os.environ["FMDIAG_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, out / shot.name)
    return {"drawn": drawn, "errors": errors, "remote": remote}


def assert_rendered(got: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert got["errors"] == []
    assert got["remote"] == []
    for fig in expected:
        assert got["drawn"].get(fig) is True, (fig, got["drawn"])
    assert all(got["drawn"].values()), got["drawn"]


@pytest.mark.parametrize(
    ("sample", "overlay"),
    [("straggler-thermal", "fig-overlay-straggler"), ("network-node", "fig-overlay-network")],
)
def test_sample_report_renders(browser: Browser, tmp_path: Path, sample: str, overlay: str) -> None:
    out = tmp_path / f"{sample}.html"
    r = CliRunner().invoke(analyze, [str(SAMPLES / sample), "--json", "--workers", "1", "--html", str(out)])
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)  # --json's stdout is the document alone
    assert r.stderr.strip() == f"wrote {out}"
    text = check_file(out)
    assert has(text, f"<title>fmdiag analyze: {sample}</title>", report_json.FORMAT) == []
    got = open_report(browser, out, tmp_path / f"report-{sample}.png")
    assert_rendered(got, (*BASE, overlay))


def test_steps_only_dump_renders_notes(browser: Browser, tmp_path: Path) -> None:
    dump = tmp_path / "steps-only"
    shutil.copytree(SAMPLES / "straggler-thermal" / "steps", dump / "steps")
    out = tmp_path / "steps-only.html"
    r = CliRunner().invoke(analyze, [str(dump), "--workers", "1", "--html", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("fmdiag analyze ")  # the terminal summary is still written
    text = check_file(out)
    # without GPU metrics the late rank is not a costed straggler: nothing lost, no empty chart
    assert has(text, "no node metrics in this dump", "no time lost to any cause") == []
    got = open_report(browser, out, tmp_path / "report-steps-only.png")
    assert_rendered(got, tuple(f for f in BASE if f != "fig-lost"))
    assert "fig-lost" not in got["drawn"]
    assert not [f for f in got["drawn"] if f.startswith("fig-overlay-")]


def test_lost_time_is_the_attribution_and_a_note_without_it(tmp_path: Path) -> None:
    """The figure draws the document's attribution; a document without one (no verdicts) says so."""
    from fmdiag.analyzers import pipeline

    a = pipeline.run(SAMPLES / "io-lustre", Options(workers=1))
    doc = report_json.document(a)
    text = report_html.render(a, doc)
    assert has(text, 'id="fig-lost"', "what-if attribution", 'id="fig-overlay-io"') == []
    doc["attribution"] = None
    text = report_html.render(a, doc)
    assert has(text, "no time lost to show") == [] and 'id="fig-lost"' not in text


def test_whole_job_is_said_once_and_nodes_are_coloured_by_cause() -> None:
    from fmdiag.analyzers import pipeline

    a = pipeline.run(SAMPLES / "network-volume", Options(workers=1))
    text = report_html.render(a, report_json.document(a))
    assert "job whole job" not in text and "whole job" in text
    a = pipeline.run(SAMPLES / "straggler-thermal", Options(workers=1))
    doc = report_json.document(a)
    text = report_html.render(a, doc)
    assert 'id="fig-lost-nodes"' in text and "Time lost per node, by cause" in text
    assert '"name":"straggler"' in text.replace(" ", "")


def _big_job(ranks: int = 4096, steps: int = 1000, gpus_per_node: int = 8) -> tuple[Analysis, dict[str, Any]]:
    """A 4,096-rank x 1,000-step analysis with GPU metrics for every GPU, built directly (the
    pipeline on such a dump takes minutes): what the report must keep to a page a browser opens."""
    rng = np.random.default_rng(0)
    n = ranks * steps
    rank = np.tile(np.arange(ranks), steps)
    step = np.repeat(np.arange(steps), ranks)
    names = pd.Index([f"node-{i:04d}" for i in range(ranks // gpus_per_node)])
    nodes = pd.Categorical.from_codes(rank // gpus_per_node, names)
    fw = 0.4 + 0.02 * rng.random(n)
    bw = 0.8 + 0.04 * rng.random(n)
    comm = 0.05 * rng.random(n)
    dur = fw + bw + comm + 0.01
    t0 = 1.75e9
    end_ns = ((t0 + (step + 1) * 1.3) * 1e9).astype("int64")
    frame = pd.DataFrame(
        {
            "step": step,
            "rank": rank,
            "node": nodes,
            "duration_s": dur,
            "data_wait": 0.002,
            "forward": fw,
            "backward": bw,
            "optimizer": 0.008,
            "comm_exposed": comm,
            "checkpoint": np.nan,
            "unattributed_s": 0.0,
            "start_ns": end_ns - (dur * 1e9).astype("int64"),
            "end_ns": end_ns,
        }
    )
    ts = t0 + np.arange(0, steps * 1.3 + 15, 15.0)
    gpu = pd.DataFrame(
        {
            "timestamp": np.tile(np.repeat(ts, ranks), 2),
            "metric": pd.Categorical(
                np.repeat(["DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"], len(ts) * ranks)
            ),
            "value": np.concatenate([np.full(len(ts) * ranks, 1980.0), np.zeros(len(ts) * ranks)]),
            "instance": pd.Categorical.from_codes(
                np.tile(np.arange(ranks) // gpus_per_node, 2 * len(ts)), names
            ),
            "gpu": pd.Categorical(np.tile(np.arange(ranks) % gpus_per_node, 2 * len(ts)).astype(str)),
        }
    )
    culprit = {"node": "node-0100", "rank": 803, "gpu": 3}
    verdicts: list[dict[str, Any]] = [
        {
            "step": s,
            "class": "straggler" if 300 <= s < 600 else "compute",
            "confidence": 0.9,
            "evidence": [],
            "culprit": culprit if 300 <= s < 600 else None,
            "recommendation": "drain node-0100: GPU 3 in HW slowdown" if 300 <= s < 600 else "compute-bound",
            "undecided": [],
        }
        for s in range(steps)
    ]
    a = Analysis(
        dump="/dumps/big-job",
        options=Options(),
        steps=frame,
        steps_coverage=StepsCoverage(),
        step_breakdown=frame,
        step_spread={},
        clock_offsets={},
        traces=[],
        kineto_breakdown={},
        kineto_spread={},
        hta=None,
        metrics={},
        metrics_source="dump",
        metric_frames={"gpu": gpu},
    )
    causes = ("straggler", "network", "io", "host", "checkpoint")
    doc = {
        "format": report_json.FORMAT,
        "version": report_json.VERSION,
        "fmdiag_version": "test",
        "dump": a.dump,
        "verdicts": verdicts,
        "attribution": {
            "run": {"lost_s": {c: 10.0 * i for i, c in enumerate(causes)}},
            "per_step": {
                "columns": ["step", *[f"lost_{c}_s" for c in causes]],
                "rows": [[s, 0.1, 0.0, None, 0.0, 0.0] for s in range(steps)],
            },
        },
        "aggregates": {
            "by_node": [{"node": f"node-{i:04d}", "lost_s": float(i)} for i in range(ranks // gpus_per_node)]
        },
    }
    return a, doc


def test_big_job_stays_small_and_renders(browser: Browser, tmp_path: Path) -> None:
    a, doc = _big_job()
    out = tmp_path / "big-job.html"
    out.write_text(report_html.render(a, doc), encoding="utf-8")
    text = check_file(out)
    # 4,096 ranks binned into 512 rows; the 40 nodes that lost most of 512
    assert has(text, "bins of 8 ranks", "top 40 of 512") == []
    got = open_report(browser, out, tmp_path / "report-big-job.png")
    assert_rendered(got, (*BASE, "fig-lost-nodes", "fig-overlay-straggler"))
