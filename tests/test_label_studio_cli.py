"""`clasp report` and `clasp label-studio` (no server needed)."""

from __future__ import annotations

import json

import pytest

from clasp_cli.main import main
from integrations.db.models import Image, Review, ReviewLink, SegmentationRun
from integrations.db.schema import upgrade
from integrations.db.session import session_scope
from integrations.label_studio.review import RegionMask, survival

import numpy as np


@pytest.fixture
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'clasp.db'}"
    upgrade(url)
    return url


def _review(session, image_id: int, task_id: int, ann_id: int, stats: dict, mv: str = "clasp-0.1.0/x/abc") -> None:
    link = ReviewLink(image_id=image_id, ls_project_id=1, ls_task_id=task_id, model_version=mv)
    session.add(link)
    session.flush()
    session.add(Review(review_link_id=link.id, ls_annotation_id=ann_id, result=[], reviewer="a@b", survival=stats))


def test_report_prints_survival_figures(db_url, capsys):
    a = np.zeros((4, 4), bool); a[:2] = True
    b = ~a
    with session_scope(db_url) as s:
        s.add_all([Image(uri=f"/img/{i}.jpg", status="reviewed") for i in range(3)])
        s.flush()
        _review(s, 1, 11, 101, survival([RegionMask("p0", a), RegionMask("p1", b)], [RegionMask("p0", a, ("violence",))]))
        _review(s, 2, 12, 102, survival([RegionMask("p0", a)], [RegionMask("p0", a)]))
        s.add(ReviewLink(image_id=3, ls_project_id=1, ls_task_id=13, model_version="clasp-0.1.0/x/abc"))
        s.commit()
    assert main(["report", "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 tasks sent to Label Studio reviewed" in out
    assert "kept unchanged     2  (66.7%)" in out and "deleted            1  (33.3%)" in out
    assert "violence 1" in out
    assert main(["report", "--database-url", db_url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kept"] == 2 and data["deleted"] == 1 and data["tasks_sent"] == 3
    assert data["mean_best_iou"] == 1.0


def test_report_on_empty_database(tmp_path, capsys):
    assert main(["report", "--database-url", f"sqlite:///{tmp_path / 'none.db'}"]) == 0
    assert "no CLASP schema" in capsys.readouterr().out


def test_label_studio_status_when_stopped(tmp_path, capsys):
    assert main(["label-studio", "status", "--data-dir", str(tmp_path), "--port", "9"]) == 0
    assert "stopped" in capsys.readouterr().out


def test_label_studio_backend_refuses_an_unknown_backbone(capsys):
    assert main(["label-studio", "backend", "--backbone", "nope", "--port", "9"]) == 2
    assert "backbone='nope'" in capsys.readouterr().err
