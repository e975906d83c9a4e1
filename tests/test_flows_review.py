"""The review hand-off flows: skipped cleanly without Label Studio; with a real one,
the pipeline pushes its proposals (with a link artifact) and `sync_reviews` brings a review back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import flows_support as fs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def harness(request):
    fs.ensure_harness(request)


def test_review_flows_skip_without_label_studio(monkeypatch, tmp_path):
    from flows.review import push_for_review, sync_reviews

    for var in ("LABEL_STUDIO_URL", "CLASP_LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "CLASP_LABEL_STUDIO_API_KEY",
                "LABEL_STUDIO_API_KEY_FILE", "CLASP_LABEL_STUDIO_API_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert push_for_review(database_url=url)["skipped"] is True
    assert sync_reviews(database_url=url)["skipped"] is True


def _artifact_links(key: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return [a.data for a in arts]

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.label_studio
def test_pipeline_pushes_to_label_studio_and_syncs_reviews(label_studio_server, shared_data, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from flows import resources
    from flows.pipeline import moderation_pipeline
    from flows.review import sync_reviews
    from integrations.db.models import Image, ReviewLink
    from integrations.label_studio.client import LabelStudioClient

    creds = label_studio_server.credentials()
    monkeypatch.setenv("LABEL_STUDIO_URL", creds.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", creds.token())
    monkeypatch.setenv("CLASP_LABEL_STUDIO_DOCUMENT_ROOT", str(REPO.parent))  # serve ../shared/data as local files
    # K is at least 2, so a cap of one region per task must merge on every task.
    monkeypatch.setenv("CLASP_LABEL_STUDIO_MAX_REGIONS", "1")
    project = f"CLASP flows test {tmp_path.name}"
    paths = fs.shared_images(shared_data, limit=3)

    with fs.database("sqlite", tmp_path) as url:
        result = moderation_pipeline(
            source=[str(p) for p in paths], database_url=url, output_dir=str(tmp_path / "out"),
            batch_size=4, project=project, **fs.FAST,
        )
        assert result["segment"]["done"] == 3
        push = result["push"]
        assert push["pushed"] == 3 and push["error"] is None, push
        assert push["project_url"].startswith(creds.url) and f"/projects/{push['project_id']}" in push["project_url"]
        assert push["project_url"] in str(_artifact_links("label-studio-project"))

        with resources.session(url) as s:
            assert set(s.execute(sa.select(Image.status)).scalars()) == {"sent_for_review"}
            link = s.execute(sa.select(ReviewLink).order_by(ReviewLink.id)).scalars().first()
            task_id, image_id = link.ls_task_id, link.image_id

        assert "local-files" in push["image_mode"]

        # A reviewer accepts the proposal of one task as it is.
        with LabelStudioClient(creds.url, creds.token()) as client:
            with resources.session(url) as s:
                task_ids = list(s.execute(sa.select(ReviewLink.ls_task_id)).scalars())
            region_counts = [len(client.task_predictions(t)[0]["result"]) for t in task_ids]
            assert region_counts == [1, 1, 1], region_counts  # CLASP_LABEL_STUDIO_MAX_REGIONS reached the push
            prediction = client.task_predictions(task_id)[0]
            client.create_annotation(task_id, prediction["result"])

        synced = sync_reviews(project=project, database_url=url)
        assert synced["synced"] == 1 and synced["reviews_new"] == 1, synced
        with resources.session(url) as s:
            assert s.get(Image, image_id).status == "reviewed"

        # Pushing again sends nothing twice.
        again = moderation_pipeline(database_url=url, output_dir=str(tmp_path / "out"), project=project, **fs.FAST)
        assert again["segment"]["claimed"] == 0 and again["push"]["pushed"] == 0
