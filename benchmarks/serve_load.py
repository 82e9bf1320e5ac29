"""Load benchmark: ``recsys serve`` (gunicorn, 2 workers) on loopback, POST /v1/rank with k = 10
over 300 candidates, against a no-op Flask endpoint under the same gunicorn settings (the floor).

An open-loop generator in another process (aiohttp) sends requests at a fixed rate for each
step, whatever the server's speed; latency counts from the scheduled send time, so queueing
shows up (no coordinated omission).  Per step: p50/p95/p99 latency, throughput and errors.

    python benchmarks/serve_load.py --home /path/to/trained/home            # 60-s steps
    python benchmarks/serve_load.py --home ... --step-seconds 10 --rates 50,100   # quick look

Writes benchmarks/results/serve_load.json and .md.  Needs a home with the MovieLens store and
champion models (``recsys ingest movielens``, ``recsys train text``, ``recsys score``,
``recsys train ranker``).  Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOOPBACK = "127.0.0.1"
TARGET = {"rate": 100, "p99_ms": 50.0}


def noop_app() -> Any:
    """The floor: a Flask app whose one endpoint does nothing (served by the same gunicorn)."""
    from flask import Flask, jsonify, request

    app = Flask("noop")

    @app.post("/noop")
    def noop() -> Any:
        request.get_data()  # read the same body the real endpoint reads
        return jsonify({"items": []})

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app


# ---------------------------------------------------------------------------------------------
# load generator (runs in its own process: `serve_load.py --generate ...`)
# ---------------------------------------------------------------------------------------------


async def _one(session: Any, url: str, body: bytes, scheduled: float, out: list[Any]) -> None:
    import aiohttp

    delay = scheduled - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            ok = r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        ok = False
    out.append((time.perf_counter() - scheduled, ok))


async def _generate(url: str, rate: float, seconds: float, bodies: list[bytes]) -> dict[str, Any]:
    import aiohttp

    n = int(rate * seconds)
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=512)
    results: list[tuple[float, bool]] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter() + 0.2
        tasks = [
            asyncio.create_task(
                _one(session, url, bodies[i % len(bodies)], start + i / rate, results)
            )
            for i in range(n)
        ]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latencies = sorted(lat for lat, ok in results if ok)
    errors = sum(1 for _, ok in results if not ok)
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "requests": n,
        "ok": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 2),
        **_percentiles(latencies),
    }


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * latencies[-1], 2),
    }


# ---------------------------------------------------------------------------------------------
# servers
# ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float, need: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            res = httpx.get(url, timeout=2)
            if need == "ready" and res.status_code == 200 or need == "up" and res.status_code < 500:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready in {timeout} s")


@contextlib.contextmanager
def _server(cmd: list[str], env: dict[str, str], probe: str, need: str) -> Iterator[None]:
    log = tempfile.NamedTemporaryFile(prefix="serve-load-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        _wait(probe, proc, 180, need)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _recsys_server(home: Path, port: int, workers: int) -> contextlib.AbstractContextManager[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RECSYS_LOG_LEVEL": "WARNING"})
    cmd = [
        sys.executable,
        "-m",
        "recsys",
        "--home",
        str(home),
        "serve",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return _server(cmd, env, f"http://{LOOPBACK}:{port}/readyz", "ready")


def _noop_server(port: int, workers: int) -> contextlib.AbstractContextManager[None]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "benchmarks"), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:serving.gunicorn_conf",
        "--bind",
        f"{LOOPBACK}:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "serve_load:noop_app()",
    ]
    return _server(cmd, env, f"http://{LOOPBACK}:{port}/noop", "up")


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def _payloads(home: Path, n_candidates: int, k: int, count: int = 200) -> list[dict[str, Any]]:
    import duckdb

    sys.path.insert(0, str(ROOT))
    from recsys.core.config import load_settings
    from serving.snapshot import read_pointer

    info = read_pointer(load_settings(overrides={"home": str(home)}, environ={}))
    if info is None:
        raise SystemExit(f"{home} has no published snapshot; run `recsys serve` once on it")
    con = duckdb.connect(info.path, read_only=True)
    users = [r[0] for r in con.execute("SELECT user_id FROM users ORDER BY user_id").fetchall()]
    items = [r[0] for r in con.execute("SELECT item_id FROM items ORDER BY item_id").fetchall()]
    con.close()
    rng = random.Random(0)
    return [
        {"user_id": rng.choice(users), "candidates": rng.sample(items, n_candidates), "k": k}
        for _ in range(count)
    ]


def _run_steps(
    url: str, rates: list[float], seconds: float, payload_file: Path
) -> list[dict[str, Any]]:
    steps = []
    for n, rate in enumerate(rates):
        if n:
            _drain("/".join(url.split("/", 3)[:3]))  # http://host:port
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--generate",
                "--url",
                url,
                "--rate",
                str(rate),
                "--step-seconds",
                str(seconds),
                "--payloads",
                str(payload_file),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        step = json.loads(out.stdout)
        steps.append(step)
        print(
            f"  {url.rsplit('/', 1)[-1]:>5} {rate:6.0f} req/s: p50 {step['p50_ms']} ms, "
            f"p95 {step['p95_ms']} ms, p99 {step['p99_ms']} ms, "
            f"{step['throughput_rps']} req/s, {step['errors']} errors",
            flush=True,
        )
    return steps


def _drain(base: str, max_seconds: float = 180.0) -> None:
    """Wait until an overloaded server has worked off its backlog, so steps stay independent."""
    import httpx

    fast = 0
    deadline = time.monotonic() + max_seconds
    while fast < 3 and time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            httpx.get(f"{base}/healthz", timeout=30).raise_for_status()
            fast = fast + 1 if time.perf_counter() - started < 0.2 else 0
        except httpx.HTTPError:
            fast = 0
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("RECSYS_HOME", ".recsys")))
    parser.add_argument("--rates", default="25,50,100,150,200", help="Requests/s per step.")
    parser.add_argument("--step-seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        bodies = [json.dumps(p).encode() for p in json.loads(args.payloads.read_text())]
        print(json.dumps(asyncio.run(_generate(args.url, args.rate, args.step_seconds, bodies))))
        return
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or any(r <= 0 or r > 5000 for r in rates) or not 1 <= args.step_seconds <= 600:
        raise SystemExit("--rates must be positive (<= 5000) and --step-seconds 1..600")
    home = args.home.resolve()
    payloads = _payloads(home, args.candidates, args.k)
    with tempfile.TemporaryDirectory() as tmp:
        payload_file = Path(tmp) / "payloads.json"
        payload_file.write_text(json.dumps(payloads))
        port = _free_port()
        print(f"no-op floor on {LOOPBACK}:{port}", flush=True)
        with _noop_server(port, args.workers):
            floor = _run_steps(
                f"http://{LOOPBACK}:{port}/noop", rates, args.step_seconds, payload_file
            )
        port = _free_port()
        print(f"recsys serve on {LOOPBACK}:{port} (home {home})", flush=True)
        with _recsys_server(home, port, args.workers):
            import httpx

            probe = httpx.post(f"http://{LOOPBACK}:{port}/v1/rank", json=payloads[0], timeout=30)
            probe.raise_for_status()
            versions = probe.json()["model_versions"]
            rank = _run_steps(
                f"http://{LOOPBACK}:{port}/v1/rank", rates, args.step_seconds, payload_file
            )
    _write(args, rates, floor, rank, versions)


def _write(
    args: argparse.Namespace,
    rates: list[float],
    floor: list[dict[str, Any]],
    rank: list[dict[str, Any]],
    versions: dict[str, str],
) -> None:
    at_target = next((s for s in rank if s["offered_rate"] == TARGET["rate"]), None)
    met = bool(
        at_target
        and at_target["errors"] == 0
        and at_target["p99_ms"] is not None
        and at_target["p99_ms"] <= TARGET["p99_ms"]
    )
    result = {
        "benchmark": "serve_load",
        "endpoint": "POST /v1/rank",
        "k": args.k,
        "candidates": args.candidates,
        "workers": args.workers,
        "step_seconds": args.step_seconds,
        "rates": rates,
        "model_versions": versions,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "2-core machine shared with other work while measuring",
        },
        "target": {**TARGET, "met": met},
        "rank": rank,
        "noop_floor": floor,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# serve_load: POST /v1/rank (k = 10 over 300 candidates), gunicorn 2 workers, loopback",
        "",
        f"Open-loop aiohttp generator in another process, {args.step_seconds:g}-s steps; "
        "latency from the scheduled send time. Models: "
        + ", ".join(f"{k} v{v}" for k, v in sorted(versions.items()))
        + f". Machine: {os.cpu_count()} CPUs, shared with other work while measuring.",
        "",
        "| offered req/s | rank p50 ms | p95 | p99 | throughput | errors "
        "| no-op p50 | p95 | p99 | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r, f in zip(rank, floor, strict=True):
        lines.append(
            f"| {r['offered_rate']:g} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['throughput_rps']} | {r['errors']} | {f['p50_ms']} | {f['p95_ms']} | "
            f"{f['p99_ms']} | {f['errors']} |"
        )
    lines += [
        "",
        f"Target p99 <= {TARGET['p99_ms']:g} ms at {TARGET['rate']} req/s with zero errors: "
        f"{'met' if met else 'NOT met'}.",
        "",
    ]
    (args.out / "serve_load.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'serve_load.json'} and {args.out / 'serve_load.md'}")


if __name__ == "__main__":
    main()
