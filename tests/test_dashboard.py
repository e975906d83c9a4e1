"""A segment run's pictures reach its Prefect dashboard page, and a browser draws them.

A real `prefect server start` on a free loopback port (tmp PREFECT_HOME); the
flow runs in a subprocess with PREFECT_API_URL pointing at it. The artifacts are
read back from the API (each must embed a PNG that decodes), then the flow-run
page's Artifacts tab is opened in headless Chromium and screenshotted; the
screenshot is kept as test-artifacts/prefect_dashboard_artifacts.png.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prefect_server import PrefectServer, run_python
from test_browser_review import chromium  # noqa: F401  (fixture: Debian's chromium, apt-get installed if missing)

pytestmark = [pytest.mark.slow]

PICTURES = {"segment-k-distribution", "segment-spectrum-median", "segment-spectrum-weakest", "segment-overlays",
            "segment-throughput"}

SEGMENT_SCRIPT = r"""
import json, sys
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from integrations.db import ensure_schema
from flows.ingest import ingest
from flows.segment import segment
url, paths = sys.argv[1], json.loads(sys.argv[2])
ensure_schema(url)
with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
    ingest(paths, database_url=url)
    state = segment(database_url=url, batch_size=3, backbone="classic", variant="patch", max_side=160,
                    output_dir=sys.argv[3], return_state=True)
print("RESULT " + json.dumps({"state": state.type.value, "flow_run_id": str(state.state_details.flow_run_id)}))
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()


def images(shared_data: Path, n: int) -> list[str]:
    paths = sorted(p for p in shared_data.glob("bsds500/images/*") if p.suffix.lower() in (".jpg", ".png"))
    if len(paths) < n:
        paths = sorted(p for p in shared_data.glob("*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [str(p) for p in paths[:n]]


def result_of(proc) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no result; rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def embedded_pngs(markdown: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)]


@pytest.fixture(scope="module")
def segment_run(prefect_server, shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("segment-run")
    proc = run_python(prefect_server, SEGMENT_SCRIPT, f"sqlite:///{tmp / 'clasp.db'}",
                      json.dumps(images(shared_data, 7)), str(tmp / "out"))
    out = result_of(proc)
    assert out["state"] == "COMPLETED", proc.stderr[-3000:]
    return out["flow_run_id"]


def test_segment_run_artifacts_include_pictures(prefect_server, segment_run, artifacts_dir):
    arts = {a["key"]: a for a in prefect_server.artifacts(segment_run) if a.get("key")}
    assert PICTURES <= set(arts), sorted(arts)
    for key in PICTURES:
        art = arts[key]
        assert art["type"] == "markdown"
        pngs = embedded_pngs(art["data"])
        assert len(pngs) == 1, key
        assert len(pngs[0]) < 100_000, (key, len(pngs[0]))
        (artifacts_dir / f"dashboard-{key}.png").write_bytes(pngs[0])  # kept to look at
        img = Image.open(io.BytesIO(pngs[0]))
        assert img.format == "PNG" and img.width >= 150 and img.height >= 100, (key, img.size)
        px = np.asarray(img.convert("RGB")).astype(int)
        assert px.std() > 20, f"{key}: a blank picture"  # drawn bars, curves, photos; not a flat image
    # the summary table is still there
    assert "segment-summary" in arts


CLICK_ARTIFACTS_TAB = """(() => {
  const tabs = Array.from(document.querySelectorAll('li, button, a')).filter(e => e.textContent.trim() === 'Artifacts');
  if (!tabs.length) return false;
  tabs[tabs.length - 1].click();
  return true;
})()"""

DRAWN_PICTURES = """Array.from(document.images)
  .filter(i => i.src.startsWith('data:image/png') && i.complete && i.naturalWidth > 100)
  .map(i => { const r = i.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })"""


def _screenshot(cdp) -> bytes:
    return base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])


def _wait(cdp, expr: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        time.sleep(1.5)
        value = cdp.eval(expr)
        if value:
            return value
    return value


@pytest.mark.browser
def test_browser_draws_the_pictures_on_the_flow_run_page(prefect_server, segment_run, artifacts_dir, chromium):
    """The run page's Artifacts tab lists the pictures; each picture's page draws it (pixel-checked)."""
    from test_browser_review import CDP, devtools_page, start_chromium

    exe = chromium
    arts = {a["key"]: a["id"] for a in prefect_server.artifacts(segment_run) if a.get("key") in PICTURES}
    profile = tempfile.mkdtemp(prefix="clasp-chromium-")
    proc = start_chromium(exe, profile)
    drawn: dict[str, np.ndarray] = {}
    try:
        cdp = CDP(devtools_page(profile, proc))
        cdp.call("Page.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=1300, deviceScaleFactor=1, mobile=False)
        # 1. the flow run's page, Artifacts tab: one card per picture
        cdp.call("Page.navigate", url=f"{prefect_server.url}/runs/flow-run/{segment_run}")
        assert _wait(cdp, CLICK_ARTIFACTS_TAB, 90), "no Artifacts tab on the flow run page"
        listed = _wait(cdp, "(() => { const t = document.body.innerText; return "
                       + " && ".join(f"t.includes('{k}')" for k in sorted(PICTURES)) + " })()", 60)
        time.sleep(1)
        (artifacts_dir / "prefect_dashboard_artifacts.png").write_bytes(_screenshot(cdp))
        assert listed, "the Artifacts tab does not list every picture"
        # 2. each picture's artifact page (a click on its card) draws the embedded PNG
        for key in sorted(PICTURES):
            cdp.call("Page.navigate", url=f"{prefect_server.url}/artifacts/artifact/{arts[key]}")
            rects = _wait(cdp, DRAWN_PICTURES, 60)
            time.sleep(0.5)
            shot = _screenshot(cdp)
            (artifacts_dir / f"prefect_dashboard_{key}.png").write_bytes(shot)
            assert rects, f"{key}: the artifact page drew no picture"
            x, y, w, h = (int(round(v)) for v in rects[0])
            px = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
            drawn[key] = px[y : y + h, x : x + w]
        cdp.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)

    def share_near(px: np.ndarray, rgb) -> float:
        return float((np.abs(px - np.array(rgb)).sum(axis=2) < 40).mean())

    for key, px in drawn.items():
        assert px.shape[0] > 80 and px.shape[1] > 150, (key, px.shape)
        assert px.std() > 20, f"{key}: drawn area is flat"
        assert share_near(px, (255, 255, 255)) > 0.2 or key == "segment-overlays", f"{key}: no white figure background"
    # matplotlib's colours where the figures put them: green chosen-K bars, blue elbow bars and eigengap curves
    assert share_near(drawn["segment-k-distribution"], (44, 160, 44)) > 0.01
    assert share_near(drawn["segment-k-distribution"], (31, 119, 180)) > 0.01
    assert share_near(drawn["segment-spectrum-median"], (31, 119, 180)) > 0.001
    assert share_near(drawn["segment-throughput"], (148, 103, 189)) > 0.01  # tab:purple bars


LOGGING_SCRIPT = r"""
import json
import flows  # attaches the integrations' logs to the current run
from prefect import flow, task
from integrations.label_studio.client import LabelStudioClient, LabelStudioUnavailable

@task
def ask_label_studio(url):
    with LabelStudioClient(url, "t0ken-not-sent", retries=2, backoff=0.01) as client:
        try:
            client.projects()
        except LabelStudioUnavailable as exc:
            return str(exc)

@flow(name="label-studio-outage")
def outage(url):
    return ask_label_studio(url)

state = outage(__import__("sys").argv[1], return_state=True)
print("RESULT " + json.dumps({"state": state.type.value, "flow_run_id": str(state.state_details.flow_run_id)}))
"""


def test_integration_retries_reach_the_flow_run_logs(prefect_server):
    from prefect_server import free_port

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    out = result_of(run_python(prefect_server, LOGGING_SCRIPT, closed, timeout=300))
    assert out["state"] == "COMPLETED"
    logs = prefect_server.logs(out["flow_run_id"])
    retries = [lg for lg in logs if lg["name"] == "integrations.label_studio.client"]
    assert [("retry 1/2" in lg["message"], lg["level"]) for lg in retries] == [(True, 30), (False, 30)], retries
    assert all(lg["task_run_id"] for lg in retries)  # tagged with the task that was retrying
    assert "retry 2/2" in retries[1]["message"]
