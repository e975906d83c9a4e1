"""Child runs that did not complete mark their parent: the moderation queue fails, naming them.

A `segment` run on a GPU worker that fails or crashes must not leave its
`moderation_pipeline` parent green. The parent still hands what was segmented
to review, then ends Failed with a message and a markdown artifact that link
each failed child's page.
"""

from __future__ import annotations

from typing import Any

COMPLETED = "COMPLETED"


def run_page(flow_run_id: str) -> str:
    """The flow run's page in the Prefect UI (the bare id when no UI URL is known)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else f"flow run {flow_run_id}"


def failed_children(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs (dicts with flow_run_id, name, state) whose state is not COMPLETED, each with its page."""
    return [{**r, "page": run_page(r["flow_run_id"])} for r in runs if r.get("state") != COMPLETED]


def failure_message(failed: list[dict[str, Any]], total: int) -> str:
    names = "; ".join(f"{r.get('name') or r['flow_run_id']} ended {r.get('state')}: {r['page']}" for r in failed)
    return f"{len(failed)} of {total} segment runs did not complete: {names}"


def failure_markdown(failed: list[dict[str, Any]], total: int) -> str:
    lines = [f"## {len(failed)} of {total} segment runs did not complete", ""]
    lines += [f"- [{r.get('name') or r['flow_run_id']}]({r['page']}): **{r.get('state')}**" for r in failed]
    return "\n".join(lines) + "\n"
