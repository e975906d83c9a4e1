"""Nearest-neighbour index over the exemplars of one embedding model, built from SQL.

Library: faiss-cpu (Meta, released monthly), chosen by measurement on this
2-core machine under load from other work (`/tmp` script, 384-d unit vectors):

- exact ``IndexFlatIP``, 100k vectors: 12-14 ms per query in batches of 20-200
  (59 ms one at a time), so ~120 ms per query at 1M: exact search alone cannot
  meet 5 ms per region at scale;
- ``IndexHNSWFlat`` (M=32), 100k vectors: 196 s to build, 1.3 ms per query,
  and its graph depends on insertion order and thread timing;
- usearch 2.26 HNSW: a 100k build had not finished after ~12 minutes of wall
  time on the loaded machine (stopped), and has the same build-order caveat.

So the index is **exact below** ``EXACT_MAX`` active exemplars (``IndexFlatIP``)
and an **inverted file** (``IndexIVFFlat``, ``nprobe`` lists of ``nlist``) above
it. Both give every worker the same answers from the same database:

- the IVF centroids are not trained by k-means (threaded float sums can differ
  between machines) but taken as the exemplars at fixed, seeded positions among
  the first 2**e rows by id, e = floor(log2(rows of the model)): a pure function
  of the table, whatever a worker's refresh history (the index is rebuilt when e
  changes, i.e. each time the table doubles);
- list membership is the exact nearest centroid, independent of insertion order;
- scores are exact inner products of the stored float32 vectors, rounded to
  1e-6, and ties are broken by the lower exemplar id.

The index is persisted (``faiss.write_index`` plus a small ``.npz`` with labels,
the watermark and the centroid choice) and refreshed incrementally: rows whose
``updated_at`` is at or after the watermark (less ``OVERLAP`` for clock skew
between workers) are re-read; new ids are added, relabelled ids change only the
label table, deactivated ids are removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from integrations.db.models import Exemplar
from integrations.db.vector import VectorDimensionError, stack_vectors

log = logging.getLogger(__name__)

EXACT_MAX = 50_000  # exact search up to this many rows (12-14 ms per region measured at 100k; linear in n)
NLIST_PER_SQRT = 4  # IVF lists = 4 * sqrt(n) at the first IVF build (1M -> 4000)
NPROBE = 16  # lists scanned per query
OVERLAP = dt.timedelta(minutes=5)  # re-read window behind the watermark (clock skew between workers)
READ_CHUNK = 50_000  # rows per SQL round trip while building
SEED = 12345  # which exemplars become IVF centroids


def model_key(model: str) -> str:
    """A short file-name-safe key of an embedding model identity."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


@dataclass
class Neighbours:
    """The k nearest active exemplars of each query (``-1`` / NaN / None pad short rows)."""

    ids: np.ndarray  # (m, k) int64
    scores: np.ndarray  # (m, k) float32 cosine similarity
    labels: list[list[str | None]]


@dataclass
class RefreshResult:
    added: int = 0
    relabelled: int = 0
    removed: int = 0
    rebuilt: bool = False
    seconds: float = 0.0


class ExemplarIndex:
    """Exemplars of one embedding model, searchable by cosine similarity.

    Parameters
    ----------
    model : str
        The embedding model identity (``integrations.db.embeddings.embedding_model``).
    dim : int
        The vector dimension.
    exact_max : int
        Exact search up to this many active exemplars, an IVF index above.
    """

    def __init__(self, model: str, dim: int, *, exact_max: int = EXACT_MAX, nprobe: int = NPROBE):
        self.model = model
        self.dim = int(dim)
        self.exact_max = exact_max
        self.nprobe = nprobe
        self.label_names: list[str] = []
        self._label_code: dict[str, int] = {}
        self.codes = np.full(0, -1, dtype=np.int32)  # exemplar id -> label code, -1 = not in the index
        self.watermark: dt.datetime | None = None
        self.max_id = 0
        self.kind = "flat"
        self.epoch: int | None = None
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    # ------------------------------------------------------------------ size and identity

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def version(self) -> str:
        """Names the exemplar set: model key, active count and the newest change seen."""
        stamp = self.watermark.strftime("%Y%m%dT%H%M%S") if self.watermark else "0"
        return f"ex-{model_key(self.model)[:8]}-n{self.size}-{stamp}"

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, session: Session, model: str, *, exact_max: int = EXACT_MAX, nprobe: int = NPROBE
              ) -> "ExemplarIndex | None":
        """Build from the exemplars table; None when ``model`` has no exemplar (nothing to search)."""
        dim = session.execute(select(Exemplar.embedding_dim).where(Exemplar.embedding_model == model).limit(1)
                              ).scalar()
        if dim is None:
            return None
        self = cls(model, dim, exact_max=exact_max, nprobe=nprobe)
        epoch = self._epoch(session)
        if epoch is not None:
            self._start_ivf(session, epoch)
        self._apply(session, since=None)
        return self

    def _epoch(self, session: Session) -> int | None:
        """None for exact search; else floor(log2(rows)), which fixes the IVF centroids.

        Counted over all rows of the model (deactivated ones too: they never go away),
        so that every worker derives the same epoch, hence the same centroids, from
        the same table, whatever its refresh history.
        """
        n_rows = session.execute(select(func.count()).select_from(Exemplar).where(
            Exemplar.embedding_model == self.model)).scalar() or 0
        return None if n_rows <= self.exact_max else int(np.floor(np.log2(n_rows)))

    def _start_ivf(self, session: Session, epoch: int) -> None:
        source = 2 ** epoch  # centroids come from the first 2**epoch rows by id
        nlist = int(min(max(NLIST_PER_SQRT * np.sqrt(source), 16), 65_536, source))
        ids = np.array(session.execute(select(Exemplar.id).where(Exemplar.embedding_model == self.model)
                                       .order_by(Exemplar.id).limit(source)).scalars().all(), dtype=np.int64)
        pick = np.sort(np.random.default_rng(SEED).choice(len(ids), size=min(nlist, len(ids)), replace=False))
        chosen = ids[pick]
        vecs = []
        for start in range(0, len(chosen), 1000):
            part = [int(i) for i in chosen[start:start + 1000]]
            got = dict(session.execute(select(Exemplar.id, Exemplar.embedding).where(Exemplar.id.in_(part))).all())
            vecs.extend(np.asarray(got[i], dtype=np.float32) for i in part)
        centroids = np.ascontiguousarray(np.stack(vecs), dtype=np.float32)
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(centroids)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, len(centroids), faiss.METRIC_INNER_PRODUCT)
        ivf.is_trained = True  # centroids chosen from the data, not trained: the same on every worker
        ivf.nprobe = self.nprobe
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids by exemplar id
        ivf.own_fields = True
        quantizer.this.disown()
        self.index = ivf
        self.kind = "ivf"
        self.epoch = epoch

    def refresh(self, session: Session) -> RefreshResult:
        """Apply the exemplar rows changed since the watermark; rebuilds when the index outgrows exact search."""
        t0 = time.perf_counter()
        if self._epoch(session) != self.epoch:  # crossed into IVF, or the row count doubled: new centroids
            fresh = ExemplarIndex.build(session, self.model, exact_max=self.exact_max, nprobe=self.nprobe)
            self.__dict__.update(fresh.__dict__)
            return RefreshResult(added=self.size, rebuilt=True, seconds=time.perf_counter() - t0)
        since = self.watermark - OVERLAP if self.watermark else None
        result = self._apply(session, since=since)
        result.seconds = time.perf_counter() - t0
        return result

    def _apply(self, session: Session, *, since: dt.datetime | None) -> RefreshResult:
        """New rows (id above the highest seen) in full; rows changed since ``since`` by metadata only."""
        result = RefreshResult()
        meta = (Exemplar.id, Exemplar.label, Exemplar.active, Exemplar.embedding_dim, Exemplar.updated_at)
        known_max = self.max_id
        last_id = known_max
        while True:  # new exemplars, in id order, with their vectors
            rows = session.execute(select(*meta, Exemplar.embedding)
                                   .where(Exemplar.embedding_model == self.model, Exemplar.id > last_id)
                                   .order_by(Exemplar.id).limit(READ_CHUNK)).all()
            if not rows:
                break
            last_id = rows[-1][0]
            self._apply_rows(session, rows, result)
        if since is not None and known_max:
            last_id = 0
            while True:  # relabelled, deactivated, or committed late with a lower id: no vectors read
                rows = session.execute(select(*meta).where(
                    Exemplar.embedding_model == self.model, Exemplar.updated_at >= since,
                    Exemplar.id > last_id, Exemplar.id <= known_max).order_by(Exemplar.id).limit(READ_CHUNK)).all()
                if not rows:
                    break
                last_id = rows[-1][0]
                self._apply_rows(session, [(*r, None) for r in rows], result)
        return result

    def _apply_rows(self, session: Session, rows: list, result: RefreshResult) -> None:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        top = int(ids.max())
        if top >= len(self.codes):
            grown = np.full(max(top + 1, 2 * len(self.codes)), -1, dtype=np.int32)
            grown[: len(self.codes)] = self.codes
            self.codes = grown
        add_rows, remove_ids = [], []
        for (eid, label, active, dim, updated, emb), i in zip(rows, ids):
            if dim != self.dim:
                raise VectorDimensionError(
                    f"exemplar {eid} of model {self.model!r} has dimension {dim}, the index {self.dim}")
            known = self.codes[i] >= 0
            if active:
                code = self._code(label)
                if not known:
                    add_rows.append([int(i), emb])
                    result.added += 1
                elif self.codes[i] != code:
                    result.relabelled += 1
                self.codes[i] = code
            elif known:
                remove_ids.append(i)
                self.codes[i] = -1
                result.removed += 1
            if self.watermark is None or updated > self.watermark:
                self.watermark = updated
            self.max_id = max(self.max_id, int(eid))
        if remove_ids:
            self.index.remove_ids(np.asarray(remove_ids, dtype=np.int64))
        missing = [r[0] for r in add_rows if r[1] is None]
        if missing:
            got = dict(session.execute(select(Exemplar.id, Exemplar.embedding).where(Exemplar.id.in_(missing))).all())
            for r in add_rows:
                if r[1] is None:
                    r[1] = got[r[0]]
        if add_rows:
            vecs = stack_vectors([e for _, e in add_rows], self.dim)
            self.index.add_with_ids(np.ascontiguousarray(vecs), np.fromiter((i for i, _ in add_rows), dtype=np.int64))

    def _code(self, label: str) -> int:
        code = self._label_code.get(label)
        if code is None:
            code = self._label_code[label] = len(self.label_names)
            self.label_names.append(label)
        return code

    # ------------------------------------------------------------------ searching

    def search(self, queries: np.ndarray, k: int = 10) -> Neighbours:
        """The ``k`` most similar active exemplars of each query row (cosine of unit vectors).

        Raises
        ------
        VectorDimensionError
            When the queries' dimension differs from the index's.
        """
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.shape[1] != self.dim:
            raise VectorDimensionError(f"queries of dimension {q.shape[1]} for an index of dimension {self.dim}")
        m = len(q)
        if self.size == 0 or m == 0:
            return Neighbours(np.full((m, k), -1, np.int64), np.full((m, k), np.nan, np.float32), [[None] * k] * m)
        fetch = min(self.size, k + 8)  # a few more, so that ties at the k-th place are ordered by id
        scores, ids = self.index.search(q, fetch)
        out_ids = np.full((m, k), -1, np.int64)
        out_scores = np.full((m, k), np.nan, np.float32)
        labels: list[list[str | None]] = []
        for r in range(m):
            valid = ids[r] >= 0
            s = np.round(scores[r][valid].astype(np.float64), 6)
            i = ids[r][valid]
            order = np.lexsort((i, -s))[:k]  # by score, then the lower id
            n = len(order)
            out_ids[r, :n], out_scores[r, :n] = i[order], s[order]
            labels.append([self.label_names[self.codes[j]] for j in i[order]] + [None] * (k - n))
        return Neighbours(out_ids, out_scores, labels)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (faiss index) and ``path.npz`` (labels, watermark), atomically each."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)
        meta = path.with_name(path.name + ".npz")
        tmp_meta = meta.with_name(meta.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp_meta, codes=self.codes, label_names=np.array(self.label_names, dtype=object),
                 model=self.model, dim=self.dim, kind=self.kind, epoch=-1 if self.epoch is None else self.epoch,
                 max_id=self.max_id, exact_max=self.exact_max, nprobe=self.nprobe,
                 watermark="" if self.watermark is None else self.watermark.isoformat())
        os.replace(tmp_meta, meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ExemplarIndex":
        path = Path(path)
        meta = np.load(path.with_name(path.name + ".npz"), allow_pickle=True)
        self = cls(str(meta["model"]), int(meta["dim"]), exact_max=int(meta["exact_max"]),
                   nprobe=int(meta["nprobe"]))
        self.index = faiss.read_index(str(path))
        if isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = self.nprobe
        self.kind = str(meta["kind"])
        self.epoch = None if int(meta["epoch"]) < 0 else int(meta["epoch"])
        self.codes = meta["codes"].astype(np.int32)
        self.label_names = [str(x) for x in meta["label_names"]]
        self._label_code = {n: i for i, n in enumerate(self.label_names)}
        self.max_id = int(meta["max_id"])
        wm = str(meta["watermark"])
        self.watermark = dt.datetime.fromisoformat(wm) if wm else None
        return self


def index_path(directory: str | Path, model: str) -> Path:
    """Where the persisted index of ``model`` lives under ``directory``."""
    return Path(directory) / f"exemplars-{model_key(model)}.faiss"


def load_or_build(session: Session, model: str, directory: str | Path | None = None) -> ExemplarIndex | None:
    """The index of ``model``: loaded from ``directory`` and refreshed, or built from SQL (and saved)."""
    path = index_path(directory, model) if directory else None
    index = None
    if path is not None and path.is_file():
        try:
            index = ExemplarIndex.load(path)
            if index.model != model:
                index = None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("exemplar index %s unreadable (%s): rebuilding from the database", path, exc)
            index = None
    if index is None:
        index = ExemplarIndex.build(session, model)
        if index is None:
            return None
    else:
        index.refresh(session)
    if path is not None:
        index.save(path)
    return index
