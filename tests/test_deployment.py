"""Deployments: prefect.yaml is valid, and a process work pool's worker runs a triggered `segment`.

The second test is the production path in small: `prefect deploy` reads the
repository's prefect.yaml, a `prefect worker start --pool clasp-gpu` process
polls the (test harness) API, `run_deployment` triggers `segment/gpu`, and the
worker's flow-run process claims from SQLite, segments and stores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import flows_support as fs

REPO = fs.REPO_ROOT
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_prefect_yaml_declares_every_flow_with_pools_schedule_and_limit():
    from prefect.flows import load_flow_from_entrypoint

    deps = _deployments()
    flows = {}
    for name, d in deps.items():
        flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"].split(":")[0]) + ":" + d["entrypoint"].split(":")[1])
        flows[flow.name] = d
    assert set(flows) == {"ingest", "segment", "push_for_review", "sync_reviews", "moderation_pipeline"}
    # segment on the GPU pool, everything else on the CPU pool
    assert flows["segment"]["work_pool"]["name"] == "clasp-gpu"
    for other in ("ingest", "push_for_review", "sync_reviews", "moderation_pipeline"):
        assert flows[other]["work_pool"]["name"] == "clasp-cpu"
    # the moderation queue runs on a cron schedule and fans out to the segment deployment
    queue = flows["moderation_pipeline"]
    assert any("cron" in s for s in queue["schedules"])
    assert queue["parameters"]["segment_deployment"] == "segment/gpu"
    # a concurrency limit on segmentation: Prefect's global limit "clasp-gpu", sized by the
    # CLASP_GPU_SLOTS setting (flows/gpu_slots.py), not a number written into prefect.yaml
    from flows import gpu_slots

    assert gpu_slots.GPU_LIMIT == "clasp-gpu" and "CLASP_GPU_SLOTS" in (REPO / "prefect.yaml").read_text()
    assert "concurrency_limit" not in flows["segment"] and "segment_runs" not in queue["parameters"]
    # telemetry off in every job
    for d in deps.values():
        env = d["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"


def _stop(proc: subprocess.Popen) -> str:
    """Stop a worker: it ignores the first signal, so send two, then kill."""
    if proc.poll() is None:
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    out = proc.stdout.read() if proc.stdout else ""
    return out[-4000:]


@pytest.mark.slow
def test_process_worker_runs_a_triggered_segment_deployment(request, shared_data, tmp_path):
    from prefect.deployments import run_deployment

    fs.ensure_harness(request)
    paths = fs.shared_images(shared_data, limit=5)
    url = f"sqlite:///{tmp_path / 'clasp.db'}"
    from flows import resources
    from integrations.db.schema import ensure_schema
    from flows.ingest import ingest

    ensure_schema(url)
    ingest([str(p) for p in paths], database_url=url)

    env = fs.worker_env()
    env.update(
        CLASP_DATABASE_URL=url,  # from the worker's environment, not a flow parameter
        CLASP_REPO_DIR=str(REPO),  # the pull step's working directory
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    subprocess.run([PREFECT, "work-pool", "create", "clasp-gpu", "--type", "process"], cwd=REPO, env=env,
                   check=False, capture_output=True, timeout=120)
    deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "gpu"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "clasp-gpu", "--limit", "1", "--type", "process"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        run = run_deployment(
            "segment/gpu",
            parameters=dict(fs.FAST, batch_size=2, device="cpu", overlays=False),
            timeout=240,
            poll_interval=1,
            as_subflow=False,
        )
        state = run.state
        assert state is not None and state.is_completed(), f"{state}\n{_stop(worker)}"

        # The scheduled queue's shape: the pipeline (here in-process) fans segmentation
        # out to two runs of the deployment, which the worker picks up.
        more = fs.shared_images(shared_data, limit=9)[len(paths):]
        from flows.pipeline import moderation_pipeline

        result = moderation_pipeline(
            source=[str(p) for p in more], database_url=url, review=False, segment_deployment="segment/gpu",
            segment_runs=2, batch_size=2, device="cpu", overlays=False, **fs.FAST,
        )
        runs = result["segment"]["runs"]
        assert len(runs) == 2 and {r["state"] for r in runs} == {"COMPLETED"}, runs
        assert result["segment"]["images"]["segmented"] == len(paths) + len(more)
        paths = paths + more
    finally:
        log = _stop(worker)
    import sqlalchemy as sa

    from integrations.db.models import Image, SegmentationRecord

    with resources.session(url) as s:
        statuses = s.execute(sa.select(Image.status)).scalars().all()
        n_seg = s.execute(sa.select(sa.func.count()).select_from(SegmentationRecord)).scalar_one()
    resources.dispose_engines()
    assert set(statuses) == {"segmented"}, log
    assert n_seg == len(paths)
