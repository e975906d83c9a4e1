"""A failed child `segment` run marks its `moderation_pipeline` parent failed, linking the child.

The segment deployment is served (`flow.serve`) by a process whose environment
makes every segment run fail at once (CLASP_BATCH_SIZE=0 is refused by the
settings: bad configuration, never retried). The parent fans out to that
deployment; it must end Failed, its message and a markdown artifact naming the
failed child's page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from prefect_server import REPO_ROOT, PrefectServer, run_python

pytestmark = [pytest.mark.slow]

SERVE = r"""
from flows.segment import segment
segment.serve(name="failing")
"""

PARENT = r"""
import json, sys
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from integrations.db import ensure_schema
from flows.pipeline import moderation_pipeline
ensure_schema(sys.argv[1])
with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
    state = moderation_pipeline(segment_deployment="segment/failing", segment_runs=1, review=False, return_state=True)
print("RESULT " + json.dumps({"state": state.type.value, "message": state.message,
                              "flow_run_id": str(state.state_details.flow_run_id)}))
"""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home")).start()
    yield server
    server.stop()


def test_failed_child_segment_run_fails_the_parent(prefect_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'clasp.db'}"
    serve = subprocess.Popen([sys.executable, "-c", SERVE], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=open(tmp_path / "serve.log", "w"), start_new_session=True,
                             env=prefect_server.env(CLASP_BATCH_SIZE="0", CLASP_DATABASE_URL=url,
                                                    PREFECT_RUNNER_POLL_FREQUENCY="1"))
    try:
        deadline = time.monotonic() + 180
        while not prefect_server.post("/deployments/filter", {"deployments": {"name": {"any_": ["failing"]}}}):
            assert serve.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        proc = run_python(prefect_server, PARENT, url, CLASP_DATABASE_URL=url)
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    parent = json.loads(line[0][len("RESULT "):])

    children = [r for r in prefect_server.flow_runs() if r["parent_task_run_id"] and r["id"] != parent["flow_run_id"]]
    assert len(children) == 1, children
    child = children[0]
    assert child["state_type"] in ("FAILED", "CRASHED")
    assert parent["state"] == "FAILED"
    page = f"{prefect_server.url}/runs/flow-run/{child['id']}"
    assert page in parent["message"]
    arts = {a["key"]: a for a in prefect_server.artifacts(parent["flow_run_id"]) if a.get("key")}
    assert page in arts["segment-runs-failed"]["data"]
