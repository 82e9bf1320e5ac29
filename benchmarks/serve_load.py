"""Load benchmark: ``recsys serve`` (gunicorn, 2 workers) on loopback, POST /v1/rank with k = 10
over 300 candidates, against a no-op Flask endpoint under the same gunicorn settings (the floor).

An open-loop generator in another process (aiohttp) sends requests at a fixed rate for each
step, whatever the server's speed; latency counts from the scheduled send time, so queueing
shows up (no coordinated omission).  Per step: p50/p95/p99 latency, throughput and errors.

    python -m benchmarks.serve_load --home /path/to/trained/home            # 60-s steps
    python -m benchmarks.serve_load --home ... --step-seconds 10 --rates 50,100   # quick look

Overload (issue 9: load shedding), one command, about 3 minutes with the server's boot:

    python -m benchmarks.serve_load --overload --home /path/to/trained/home

measures the capacity (closed loop, 15 s, twice as many clients as gunicorn threads), then
offers 0.5, 1, 1.5, 2, 2.5 and 3 times it open loop (12-s steps) and prints each step: goodput
(200 answers/s), shed (503 + Retry-After), errors, latency, and the generator's own CPU.  The
generator is one asyncio/aiohttp process at the caller's priority (run it at nice 0; it used
under 0.1 of a core at 3x), so it does not starve the server it measures.  Writes
serve_overload.json/.md.

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

import aiohttp
import duckdb
import httpx
from flask import Flask, jsonify, request

from recsys.core.config import load_settings
from serving.snapshot import read_pointer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LOOPBACK = "127.0.0.1"
TARGET = {"rate": 100, "p99_ms": 50.0}


def noop_app() -> Any:
    """The floor: a Flask app whose one endpoint does nothing (served by the same gunicorn)."""
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
    delay = scheduled - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            status = r.status
    except (TimeoutError, aiohttp.ClientError):
        status = 0  # timed out (the client gave up) or the connection failed
    out.append((time.perf_counter() - scheduled, status))


async def _generate(url: str, rate: float, seconds: float, bodies: list[bytes]) -> dict[str, Any]:
    n = int(rate * seconds)
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=512)
    results: list[tuple[float, int]] = []
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
    return _summary(results, elapsed, offered_rate=rate, seconds=seconds, **_own_cpu())


def _own_cpu() -> dict[str, float]:
    """CPU seconds this generator process used: it shares the machine with the server."""
    t = os.times()
    return {"generator_cpu_s": round(t.user + t.system, 2)}


def _summary(results: list[tuple[float, int]], elapsed: float, **extra: Any) -> dict[str, Any]:
    """ok = 200 answers (their rate is the goodput), shed = 503 answers, errors = the rest."""
    latencies = sorted(lat for lat, status in results if status == 200)
    shed = sum(1 for _, status in results if status == 503)
    return {
        **extra,
        "requests": len(results),
        "ok": len(latencies),
        "shed": shed,
        "errors": len(results) - len(latencies) - shed,
        "throughput_rps": round(len(latencies) / elapsed, 2),
        **_percentiles(latencies),
    }


async def _calibrate(url: str, seconds: float, concurrency: int, bodies: list[bytes]) -> dict:
    """Closed loop: ``concurrency`` clients back to back; the 200 rate is the capacity."""
    results: list[tuple[float, int]] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        end = time.perf_counter() + seconds

        async def loop(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                await _one(session, url, bodies[i % len(bodies)], time.perf_counter(), results)
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return _summary(results, elapsed, concurrency=concurrency, seconds=seconds)


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
        _wait(probe, proc, 600, need)  # a busy machine loads models slowly
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _recsys_server(
    home: Path, port: int, workers: int, extra_env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RECSYS_LOG_LEVEL": "WARNING"})
    env.update(extra_env or {})
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
    settings = load_settings(overrides={"home": str(home)}, environ={})
    info = read_pointer(settings)
    con = duckdb.connect(info.path if info else str(settings.db_path), read_only=True)
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
        step = _generator(url, payload_file, ["--rate", str(rate), "--step-seconds", str(seconds)])
        steps.append(step)
        print(
            f"  {url.rsplit('/', 1)[-1]:>5} {rate:6.0f} req/s: p50 {step['p50_ms']} ms, "
            f"p95 {step['p95_ms']} ms, p99 {step['p99_ms']} ms, "
            f"{step['throughput_rps']} req/s ok, {step['shed']} shed, {step['errors']} errors",
            flush=True,
        )
    return steps


def _generator(url: str, payload_file: Path, args: list[str]) -> dict[str, Any]:
    """Run the load generator in its own process (so it does not share the GIL with us)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.serve_load",
        "--generate",
        "--url",
        url,
        "--payloads",
        str(payload_file),
    ]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd + args, check=True, capture_output=True, text=True, cwd=root)
    return dict(json.loads(out.stdout))


def _drain(base: str, max_seconds: float = 180.0) -> None:
    """Wait until an overloaded server has worked off its backlog, so steps stay independent."""
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
    parser.add_argument(
        "--step-seconds", type=float, help="Seconds per step (default 60; --overload: 12)."
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--payloads", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--overload",
        action="store_true",
        help="Measure capacity (closed loop), then offer --multiples of it and report goodput "
        "and shed requests (writes serve_overload.json/.md).",
    )
    parser.add_argument("--multiples", default="0.5,1,1.5,2,2.5,3")
    parser.add_argument("--calibrate-seconds", type=float, default=15.0)
    parser.add_argument(
        "--deadline-ms", type=float, help="serving.queue_deadline_ms for the server (0: off)."
    )
    args = parser.parse_args()
    if args.step_seconds is None:
        args.step_seconds = 12.0 if args.overload else 60.0
    if args.generate:
        bodies = [json.dumps(p).encode() for p in json.loads(args.payloads.read_text())]
        if args.concurrency:
            run = _calibrate(args.url, args.step_seconds, args.concurrency, bodies)
        else:
            run = _generate(args.url, args.rate, args.step_seconds, bodies)
        print(json.dumps(asyncio.run(run)))
        return
    if args.overload:
        overload_main(args)
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


def overload_main(args: argparse.Namespace) -> None:
    """Capacity, then steps at multiples of it: goodput (200/s), shed (503) and client errors."""
    multiples = [float(m) for m in args.multiples.split(",") if m.strip()]
    home = args.home.resolve()
    payloads = _payloads(home, args.candidates, args.k)
    env = (
        {}
        if args.deadline_ms is None
        else {"RECSYS_SERVING__QUEUE_DEADLINE_MS": str(args.deadline_ms)}
    )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        payload_file = Path(tmp) / "payloads.json"
        payload_file.write_text(json.dumps(payloads))
        port = _free_port()
        url = f"http://{LOOPBACK}:{port}/v1/rank"
        print(f"recsys serve on {LOOPBACK}:{port} (home {home})", flush=True)
        with _recsys_server(home, port, args.workers, env):
            # twice the threads (4 per worker, serving/gunicorn_conf): every worker stays busy
            # although connections reach the workers unevenly, so this is the most it answers
            concurrency = args.workers * 4 * 2
            cal = _generator(
                url,
                payload_file,
                ["--concurrency", str(concurrency), "--step-seconds", str(args.calibrate_seconds)],
            )
            capacity = float(cal["throughput_rps"])
            print(f"  capacity (closed loop, {concurrency} clients): {capacity} req/s", flush=True)
            if capacity <= 0:
                raise SystemExit("the server answered nothing during calibration")
            rates = [round(m * capacity, 1) for m in multiples]
            steps = _run_steps(url, rates, args.step_seconds, payload_file)
    for m, step in zip(multiples, steps, strict=True):
        step["multiple"] = m
        step["goodput_share_of_capacity"] = round(step["throughput_rps"] / capacity, 3)
    at2 = next((st for st in steps if st["multiple"] == 2.0), None)
    met = bool(at2 and at2["goodput_share_of_capacity"] >= 0.8)
    result = {
        "benchmark": "serve_overload",
        "endpoint": "POST /v1/rank",
        "workers": args.workers,
        "step_seconds": args.step_seconds,
        "client_timeout_s": 10,
        "queue_deadline_ms": args.deadline_ms if args.deadline_ms is not None else "default",
        "capacity": cal,
        "steps": steps,
        "target": {"goodput_at_2x_share": 0.8, "met": met},
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_overload.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# serve_overload: POST /v1/rank past capacity (load shedding)",
        "",
        f"Capacity {capacity} req/s (closed loop, {cal['concurrency']} clients, "
        f"{args.calibrate_seconds:g} s); then open-loop {args.step_seconds:g}-s steps at "
        "multiples of it. Goodput = 200 answers per second (client timeout 10 s); shed = 503 "
        f"+ Retry-After. Queue deadline: {result['queue_deadline_ms']} ms. Load average "
        f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs.",
        "",
        "| x capacity | offered req/s | goodput req/s | share of capacity | shed | errors "
        "| p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for st in steps:
        lines.append(
            f"| {st['multiple']:g} | {st['offered_rate']:g} | {st['throughput_rps']} | "
            f"{st['goodput_share_of_capacity']} | {st['shed']} | {st['errors']} | "
            f"{st['p50_ms']} | {st['p99_ms']} |"
        )
    lines += ["", f"Goodput at 2x >= 80% of capacity: {'met' if met else 'NOT met'}.", ""]
    (args.out / "serve_overload.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'serve_overload.json'} and .md")


if __name__ == "__main__":
    main()
