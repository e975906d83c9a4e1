"""GPU slots the Prefect way: two workers, one slot, their GPU sections never overlap.

Two `segment` flow runs in two processes share one SQLite queue and one Prefect
server whose global concurrency limit "clasp-gpu" has CLASP_GPU_SLOTS=1 slot.
Each batch's `segment-batch` task runs inside the slot, so the task runs of the
two flow runs, read back from the API with their start and end times, must
never overlap in time, while the two flow runs themselves do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime

import pytest

from prefect_server import REPO_ROOT, PrefectServer

pytestmark = [pytest.mark.slow]

WORKER = r"""
import json, sys, time
from pathlib import Path
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from flows import resources
from integrations.settings import load_settings
from flows.segment import segment

url, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
fast = dict(backbone="classic", variant="patch", max_side=160)
resources.get_segmenter(load_settings(device="cpu", **fast).engine_config())  # model loaded before the start signal
ready.touch()
while not go.exists():
    time.sleep(0.02)
with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
    state = segment(database_url=url, batch_size=2, overlays=False, device="cpu", return_state=True, **fast)
print("RESULT " + json.dumps({"state": state.type.value, "flow_run_id": str(state.state_details.flow_run_id),
                              "done": state.result()["done"]}))
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()


def _t(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_one_gpu_slot_serialises_two_workers(prefect_server, shared_data, tmp_path):
    from flows import resources
    from integrations.db import ensure_schema
    from integrations.ingest import ingest_uris
    from integrations.settings import load_settings

    url = f"sqlite:///{tmp_path / 'clasp.db'}"
    ensure_schema(url)
    paths = sorted(p for p in shared_data.glob("*/images/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:12]
    with resources.session(url) as session:
        ingest_uris(session, [str(p) for p in paths], load_settings(), lazy=True)
    resources.dispose_engines()

    go = tmp_path / "go"
    env = prefect_server.env(CLASP_GPU_SLOTS="1", CLASP_GPU_SLICE_SECONDS="0")  # a slot per batch: they interleave
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, url, str(ready), str(go)], env=env, cwd=REPO_ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in readies):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a worker did not start"
        time.sleep(0.1)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert line, f"rc={p.returncode}\n{out[-2000:]}\n{err[-3000:]}"
        results.append(json.loads(line[0][len("RESULT "):]))
    assert [r["state"] for r in results] == ["COMPLETED", "COMPLETED"]
    assert sum(r["done"] for r in results) == len(paths)

    limit = prefect_server.post("/v2/concurrency_limits/filter", {})
    assert [(gl["name"], gl["limit"]) for gl in limit] == [("clasp-gpu", 1)]

    sections = []  # (start, end, run index) of every segment-batch task run
    spans = []
    for i, r in enumerate(results):
        runs = prefect_server.flow_runs(id={"any_": [r["flow_run_id"]]})
        spans.append((_t(runs[0]["start_time"]), _t(runs[0]["end_time"])))
        for tr in prefect_server.task_runs(r["flow_run_id"]):
            if tr["name"].startswith("segment-batch") and tr["start_time"]:
                sections.append((_t(tr["start_time"]), _t(tr["end_time"]), i))
    assert {i for _, _, i in sections} == {0, 1}, "both workers segmented batches"
    # the two flow runs ran at the same time ...
    assert max(s for s, _ in spans) < min(e for _, e in spans)
    # ... and their GPU sections never overlapped
    sections.sort()
    for (s1, e1, i1), (s2, e2, i2) in zip(sections, sections[1:]):
        assert s2 >= e1, f"segment-batch of run {i2} started {e1 - s2:.3f} s before run {i1}'s ended"


def test_limit_created_once_by_concurrent_workers_and_resized_by_the_setting(prefect_server, monkeypatch):
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import gpu_slots

    monkeypatch.delenv("CLASP_GPU_SLOTS", raising=False)
    with temporary_settings({PREFECT_API_URL: prefect_server.api}):
        for gl in prefect_server.post("/v2/concurrency_limits/filter", {}):
            httpx.delete(f"{prefect_server.api}/v2/concurrency_limits/{gl['id']}").raise_for_status()
        ctx = contextvars.copy_context()  # the threads see this server (settings live in a context variable)
        with ThreadPoolExecutor(4) as pool:
            sizes = list(pool.map(lambda _: ctx.copy().run(gpu_slots.ensure_gpu_limit), range(4)))
        assert sizes == [1, 1, 1, 1]
        monkeypatch.setenv("CLASP_GPU_SLOTS", "3")
        assert gpu_slots.ensure_gpu_limit() == 3
        monkeypatch.delenv("CLASP_GPU_SLOTS")
        assert gpu_slots.ensure_gpu_limit() == 3  # unset: the server's size stands
    limits = prefect_server.post("/v2/concurrency_limits/filter", {})
    assert [(gl["name"], gl["limit"]) for gl in limits] == [("clasp-gpu", 3)]
