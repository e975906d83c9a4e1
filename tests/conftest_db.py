"""Database fixtures for the SQL data layer tests (imported by tests/test_db_*.py).

- `sqlite_url`: a SQLite file in tmp_path.
- `pg_url`: a PostgreSQL database created for the test and dropped after it, on
  the server named by CLASP_TEST_PG_SERVER (default
  postgresql+psycopg://postgres@127.0.0.1:5432/test, the maintenance database
  used to CREATE / DROP). Skipped with a clear reason when the server is unreachable.
- `db_url`: both of the above, parametrised ("sqlite", "postgres").
- `migrated_url` / `session`: the same, upgraded to head.
- `make_segmentation`, `sha`, `inputs`, `expire_leases`: test data for the data-layer tests.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import pytest

PG_SERVER = os.environ.get("CLASP_TEST_PG_SERVER", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_admin_conninfo() -> str:
    from sqlalchemy.engine import make_url

    u = make_url(PG_SERVER)
    parts = [f"host={u.host or '127.0.0.1'}", f"port={u.port or 5432}", f"dbname={u.database or 'postgres'}"]
    if u.username:
        parts.append(f"user={u.username}")
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts) + " connect_timeout=3"


_pg_unreachable: str | None = None


def pg_unavailable_reason() -> str | None:
    """None when the server answers, else why not."""
    global _pg_unreachable
    if _pg_unreachable is None:
        try:
            import psycopg

            with psycopg.connect(pg_admin_conninfo(), autocommit=True) as conn:
                conn.execute("SELECT 1")
            _pg_unreachable = ""
        except Exception as exc:  # noqa: BLE001
            _pg_unreachable = f"PostgreSQL at {PG_SERVER} is unreachable ({type(exc).__name__}: {exc})"
    return _pg_unreachable or None


def create_pg_database() -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"clasp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(PG_SERVER).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False
    )


def drop_pg_database(url: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with psycopg.connect(pg_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_database(kind: str) -> Iterator[str | None]:
    """A fresh database URL of `kind` ("sqlite" or "postgres"), removed afterwards (benchmarks).

    Yields None, after printing why, when PostgreSQL is unreachable.
    """
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    why = pg_unavailable_reason()
    if why:
        print(f"postgres: skipped: {why}")
        yield None
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'clasp-test.db'}"


@pytest.fixture
def pg_url():
    why = pg_unavailable_reason()
    if why:
        pytest.skip(why)
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def migrated_url(db_url) -> str:
    from integrations.db.schema import upgrade

    upgrade(db_url, "head")
    return db_url


@pytest.fixture
def session(migrated_url):
    from integrations.db.session import make_engine, make_session_factory

    engine = make_engine(migrated_url)
    factory = make_session_factory(engine)
    s = factory()
    try:
        yield s
    finally:
        s.close()
        engine.dispose()


def make_segmentation(height: int = 48, width: int = 64, k: int = 3, *, seed: int = 0, variant: str = "pixel",
                      labels=None, nan_silhouette: bool = False):
    """A Segmentation built by hand (no engine): vertical bands plus noise, with full diagnostics."""
    import numpy as np

    from clasp_engine.result import Diagnostics, Segment, Segmentation

    rng = np.random.default_rng(seed)
    if labels is None:
        labels = (np.arange(width)[None, :] * k // width).repeat(height, 0).astype(np.int32)
        flip = rng.random((height, width)) < 0.02
        labels[flip] = rng.integers(0, k, size=int(flip.sum()))
    rows, cols = max(1, height // 8), max(1, width // 8)
    patch = labels[:: max(1, height // rows), :: max(1, width // cols)][:rows, :cols].astype(np.int64)
    segments = []
    for lab in range(int(labels.max()) + 1):
        ys, xs = np.nonzero(labels == lab)
        if len(ys) == 0:
            continue
        segments.append(
            Segment(lab, int(len(ys)), (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                    float(rng.uniform(0.5, 1.0)))
        )
    eig = sorted(rng.uniform(0, 1, 20).tolist(), reverse=True)
    eig[0] = 1.0
    sil = {kk: float(rng.uniform(-0.2, 0.8)) for kk in range(max(2, k - 2), k + 3)}
    if nan_silhouette:
        sil[max(sil)] = float("nan")
    diag = Diagnostics(
        k=k, elbow_k=k, k_rule="silhouette", eigenvalues=eig,
        eigengaps=[a - b for a, b in zip(eig, eig[1:])],
        elbow_distances=rng.uniform(0, 0.3, 19).tolist(), silhouette=sil,
        backbone="dino_vits8", weights="pretrained:timm", weights_sha256="ab" * 32, features="tokens",
        variant=variant, width=width, height=height, work_width=(width // 8) * 8, work_height=(height // 8) * 8,
        grid=(rows, cols), patch_size=8, device="cpu",
        timings={"features": 0.123456789, "graph": 0.01, "eigen": 0.02, "select_k": 0.003, "cluster": 0.004,
                 "refine": 0.1},
        engine_version="0.1.0", config={"backbone": "dino_vits8", "max_side": 448, "crf": {"iterations": 5}},
        warnings=["example warning"],
    )
    return Segmentation(labels=labels, patch_labels=patch, segments=segments, diagnostics=diag)


def sha(i: int | str) -> str:
    """A content hash for test image number `i` (sha256 of its decimal text)."""
    import hashlib

    return hashlib.sha256(str(i).encode()).hexdigest()


def inputs(n: int, start: int = 0) -> list:
    """`n` ImageInputs with distinct content hashes: /data/img{start}.jpg, ..."""
    from integrations.db import ImageInput

    return [ImageInput(uri=f"/data/img{i}.jpg", content_sha256=sha(i), size_bytes=1000 + i) for i in range(start, start + n)]


def expire_leases(session, ids=None) -> None:
    """Make the leases of claimed images (all, or those in `ids`) run out in the past."""
    import datetime as dt

    from sqlalchemy import update

    from integrations.db.models import Image

    stmt = update(Image).where(Image.status == "claimed")
    if ids is not None:
        stmt = stmt.where(Image.id.in_(ids))
    session.execute(stmt.values(lease_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)))
    session.commit()
