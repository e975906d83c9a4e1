"""Exemplar scale benchmark: N exemplars (384-d, as ViT-S) through the database, then the index.

Inserts N exemplars with `integrations.review.exemplars.insert_exemplars` (bulk
executemany, in chunks), builds the faiss index from SQL, inserts a further
batch and refreshes incrementally, then queries M regions at k = 10 in batches
the size of one image's proposals. Prints every figure; the target is <= 5 ms
per region.

The embeddings are synthetic but clustered like region descriptors (unit vectors
around C centres) so that the IVF lists are realistic; recall@10 of the IVF
answers against exact search is printed with them.

    PYTHONPATH=. python benchmarks/bench_exemplars.py --n 1000000 --db sqlite:////tmp/ex.db
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clustered(rng, n, d, centres):
    c = centres[rng.integers(0, len(centres), n)]
    v = c + 0.35 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="exemplars to insert (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--db", default="sqlite:////tmp/clasp-bench-exemplars.db", help="database URL (emptied)")
    ap.add_argument("--index-dir", default="/tmp/clasp-bench-index")
    ap.add_argument("--increment", type=int, default=10_000, help="exemplars added before the incremental refresh")
    ap.add_argument("--queries", type=int, default=2_000, help="regions queried")
    ap.add_argument("--batch", type=int, default=20, help="regions per query batch (one image's proposals)")
    ap.add_argument("--chunk", type=int, default=20_000, help="exemplars per insert transaction")
    args = ap.parse_args()

    import faiss
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from integrations.db.models import Base
    from integrations.review.exemplar_index import ExemplarIndex, index_path
    from integrations.review.exemplars import insert_exemplars
    from integrations.review.suggestions import knn_vote

    model = f"bench|random|-|tokens|{args.dim}"
    if args.db.startswith("sqlite:///"):
        Path(args.db[len("sqlite:///"):]).unlink(missing_ok=True)
    engine = create_engine(args.db)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels_all = np.array(["safe", "nudity", "violence", "weapon", "drugs", "hate-symbol", "personal-data"])
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; db {engine.url.render_as_string()}",
          flush=True)

    t0 = time.perf_counter()
    with Session(engine) as s:
        for start in range(0, args.n, args.chunk):
            m = min(args.chunk, args.n - start)
            emb = _clustered(rng, m, args.dim, centres)
            insert_exemplars(s, labels_all[rng.integers(0, len(labels_all), m)].tolist(), emb, model)
            if (start // args.chunk) % 10 == 0:
                print(f"  inserted {start + m:,} ({time.perf_counter() - t0:.0f} s)", flush=True)
    t_insert = time.perf_counter() - t0
    print(f"insert     {args.n:,} exemplars: {t_insert:.1f} s ({args.n / t_insert:,.0f} rows/s)", flush=True)

    rss0 = _rss_mib()
    t0 = time.perf_counter()
    with Session(engine) as s:
        index = ExemplarIndex.build(s, model)
    t_build = time.perf_counter() - t0
    path = index.save(index_path(args.index_dir, model))
    print(f"build      {t_build:.1f} s from SQL ({index.kind}, {index.size:,} vectors); file "
          f"{path.stat().st_size / 2**20:,.0f} MiB; peak RSS {_rss_mib():,.0f} MiB (before build {rss0:,.0f})",
          flush=True)

    with Session(engine) as s:
        insert_exemplars(s, labels_all[rng.integers(0, len(labels_all), args.increment)].tolist(),
                         _clustered(rng, args.increment, args.dim, centres), model)
        t0 = time.perf_counter()
        r = index.refresh(s)
        t_refresh = time.perf_counter() - t0
    print(f"refresh    +{r.added:,} new, {r.relabelled} relabelled, {r.removed} removed: {t_refresh:.2f} s "
          f"(incremental; index now {index.size:,})", flush=True)

    q = _clustered(rng, args.queries, args.dim, centres)
    t0 = time.perf_counter()
    results = []
    for start in range(0, len(q), args.batch):
        nb = index.search(q[start:start + args.batch], 10)
        results.extend(knn_vote(nb.scores[i], nb.labels[i]) for i in range(len(nb.ids)))
        if start == 0:
            first = nb
    t_query = time.perf_counter() - t0
    print(f"query      k=10, {args.queries:,} regions in batches of {args.batch}: "
          f"{1000 * t_query / args.queries:.2f} ms per region (search + vote)", flush=True)

    if index.kind == "ivf":  # recall@10 against exhaustive search over the same lists
        sub = q[:50]
        approx = index.search(sub, 10).ids
        index.index.nprobe = index.index.nlist
        exact = index.search(sub, 10).ids
        index.index.nprobe = index.nprobe
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact)])
        print(f"recall@10  {recall:.3f} (IVF nprobe {index.nprobe} of {index.index.nlist} lists vs exhaustive, "
              f"50 queries)", flush=True)
    print(f"peak RSS   {_rss_mib():,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
