"""Exact numpy top-k vs the ANN libraries that install here (hnswlib, usearch, faiss-cpu).

For each catalog (synthetic clustered 384-d unit vectors; optionally the item vectors of a
trained store with ``--store``) it measures, with 2 threads: build time, saved index size and
RSS growth, single-query top-100 latency p50/p99, and recall@100 against exact search.  Queries
look like user vectors: the normalized mean of a few items of one cluster plus noise.

    nice -n 15 python -m benchmarks.ann                       # 1e4, 1e5 (all), 1e6 (exact)
    nice -n 15 python -m benchmarks.ann --sizes 10000 --store .recsys/recsys.duckdb

Writes benchmarks/results/ann.{json,md} with the load average of the run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import importlib.metadata as md  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

THREADS = 2
K = 100
EF_CONSTRUCTION = 128
EF_SEARCHES = (128, 256, 512)  # k=100 needs a wider beam than 128 on clustered vectors
M = 16
RESULTS = Path(__file__).parent / "results"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clustered(n: int, dim: int = 384, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (item embeddings are clustered by topic)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        x = centres[rng.integers(0, clusters, e - s)]
        x += 0.6 * rng.standard_normal((e - s, dim)).astype(np.float32) / np.sqrt(dim)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def user_queries(items: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """The normalized mean of 5 random items' vectors plus a little noise (a user vector)."""
    rng = np.random.default_rng(seed)
    q = items[rng.integers(0, len(items), (n, 5))].mean(axis=1)
    q += 0.05 * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(items.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact_topk(items: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = items @ q
    best = np.argpartition(-s, k - 1)[:k]
    return best[np.argsort(-s[best])]


def latencies(
    fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray
) -> tuple[list[float], list[float]]:
    """Wall and CPU (all threads of this process) milliseconds per query: under load the wall
    time is mostly waiting for a core, the CPU time is close to what a quiet core would take."""
    fn(queries[0])  # warm up
    wall, cpu = [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        fn(q)
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return wall, cpu


def timing(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(wall, 50)),
        "p99_ms": float(np.percentile(wall, 99)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "cpu_p99_ms": float(np.percentile(cpu, 99)),
    }


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(
        np.mean(
            [
                len(set(f.tolist()) & set(t.tolist())) / len(t)
                for f, t in zip(found, truth, strict=True)
            ]
        )
    )


Built = tuple[Callable[[int], None], Callable[[np.ndarray], np.ndarray], int]


def build_faiss(items: np.ndarray, path: Path) -> Built:
    import faiss  # type: ignore[import-untyped]

    faiss.omp_set_num_threads(THREADS)
    index = faiss.IndexHNSWFlat(items.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(items)
    faiss.write_index(index, str(path))

    def set_ef(ef: int) -> None:
        index.hnsw.efSearch = ef

    def search(q: np.ndarray) -> np.ndarray:
        return np.asarray(index.search(q[None, :], K)[1][0])

    return set_ef, search, path.stat().st_size


def build_usearch(items: np.ndarray, path: Path) -> Built:
    from usearch.index import Index

    index = Index(
        ndim=items.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=M,
        expansion_add=EF_CONSTRUCTION,
    )
    index.add(np.arange(len(items), dtype=np.uint64), items, threads=THREADS)
    index.save(str(path))

    def set_ef(ef: int) -> None:
        index.expansion_search = ef

    def search(q: np.ndarray) -> np.ndarray:
        return np.asarray(index.search(q, K, threads=1).keys)

    return set_ef, search, path.stat().st_size


def build_hnswlib(items: np.ndarray, path: Path) -> Built:
    import hnswlib  # type: ignore[import-not-found]

    index = hnswlib.Index(space="ip", dim=items.shape[1])
    index.init_index(max_elements=len(items), ef_construction=EF_CONSTRUCTION, M=M)
    index.add_items(items, np.arange(len(items)), num_threads=THREADS)
    index.save_index(str(path))

    def search(q: np.ndarray) -> np.ndarray:
        return np.asarray(index.knn_query(q[None, :], k=K, num_threads=1)[0][0])

    return index.set_ef, search, path.stat().st_size


LIBRARIES: dict[str, tuple[str, Callable[..., Any]]] = {
    "faiss_hnsw": ("faiss-cpu", build_faiss),
    "usearch_hnsw": ("usearch", build_usearch),
    "hnswlib": ("hnswlib", build_hnswlib),
}


def version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def bench_catalog(name: str, items: np.ndarray, n_queries: int, ann: bool) -> dict[str, Any]:
    queries = user_queries(items, n_queries)
    truth = [exact_topk(items, q, K) for q in queries]
    rows: dict[str, Any] = {
        "exact_numpy": {
            "build_s": 0.0,
            "build_cpu_s": 0.0,
            "index_bytes": int(items.nbytes),
            **timing(*latencies(lambda q: exact_topk(items, q, K), queries)),
            "recall_at_100": 1.0,
        }
    }
    print(f"{name}: exact {rows['exact_numpy']}", flush=True)
    for lib, (dist, build) in LIBRARIES.items():
        if not ann:
            rows[lib] = {"skipped": "ANN build not run at this size (--ann-max)"}
            continue
        if version(dist) is None:
            rows[lib] = {"skipped": f"{dist} does not install here"}
            continue
        with tempfile.TemporaryDirectory(prefix="ann-bench-") as tmp:
            before = rss_mb()
            t, c = time.perf_counter(), time.process_time()
            set_ef, search, size = build(items, Path(tmp) / "index")
            build_s, build_cpu = time.perf_counter() - t, time.process_time() - c
            grown = rss_mb() - before
            for ef in EF_SEARCHES:
                set_ef(ef)
                found = [search(q) for q in queries]
                wall, cpu = latencies(search, queries)
                rows[f"{lib} ef={ef}"] = {
                    "build_s": build_s,
                    "build_cpu_s": build_cpu,
                    "index_bytes": int(size),
                    "rss_growth_mb": grown,
                    **timing(wall, cpu),
                    "recall_at_100": recall(found, truth),
                }
                print(f"{name}: {lib} ef={ef} {rows[f'{lib} ef={ef}']}", flush=True)
        del search, set_ef
    return {"catalog": name, "n_items": len(items), "dim": int(items.shape[1]), "rows": rows}


def store_items(path: str) -> np.ndarray:
    import duckdb

    from recsys.algorithms.text_index import TextIndex

    con = duckdb.connect(path, read_only=True)
    try:
        return TextIndex.load(con, users=False).item_matrix
    finally:
        con.close()


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# ANN benchmark: exact numpy vs HNSW libraries (top-100, single query, 2 threads)",
        "",
        f"Load average during the run: {result['loadavg']} on a 2-core machine shared with "
        "other agents: **not quiet**. Absolute latencies are pessimistic; ratios between "
        "libraries measured side by side in one process are still meaningful.",
        f"HNSW parameters: M={M}, ef_construction={EF_CONSTRUCTION}, ef_search in {EF_SEARCHES}. "
        f"Versions: {result['versions']}.",
        "",
        "Wall times wait for a core under this load; CPU times (all threads of the process) are "
        "closer to what a quiet core would take.",
        "",
        "| catalog | items | method | build s (CPU s) | index MB | RSS +MB | p50 ms | p99 ms "
        "| CPU p50 ms | CPU p99 ms | recall@100 |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cat in result["catalogs"]:
        for lib, r in cat["rows"].items():
            if "skipped" in r:
                lines.append(
                    f"| {cat['catalog']} | {cat['n_items']} | {lib} | {r['skipped']} |||||||| "
                )
                continue
            lines.append(
                f"| {cat['catalog']} | {cat['n_items']} | {lib} | {r['build_s']:.1f} "
                f"({r['build_cpu_s']:.1f}) | {r['index_bytes'] / 2**20:.0f} | "
                f"{r.get('rss_growth_mb', 0):.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['cpu_p50_ms']:.2f} | {r['cpu_p99_ms']:.2f} | {r['recall_at_100']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--ann-max", type=int, default=100_000, help="largest catalog to build ANN on")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--store", default="", help="a trained store: also bench its item vectors")
    p.add_argument("--out", default=str(RESULTS / "ann"))
    args = p.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    catalogs = []
    if args.store:
        catalogs.append(bench_catalog("movielens", store_items(args.store), args.queries, True))
    for n in args.sizes:
        catalogs.append(
            bench_catalog(f"synthetic-{n:.0e}", clustered(n), args.queries, n <= args.ann_max)
        )
    result = {
        "k": K,
        "threads": THREADS,
        "loadavg": f"{' '.join(load_before)} (start) / "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} (end)",
        "quiet": False,
        "params": {"M": M, "ef_construction": EF_CONSTRUCTION, "ef_search": list(EF_SEARCHES)},
        "versions": {d: version(d) for d in ("numpy", "faiss-cpu", "usearch", "hnswlib")},
        "catalogs": catalogs,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
