"""Prometheus metrics: requests and latency per endpoint, event outcomes, model versions.

Under gunicorn ``recsys serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` so every worker writes its
samples to shared files and ``/metrics`` (answered by any one worker) aggregates all of them.
Without it (tests, ``--dev``) each app has a registry of its own.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


# Label values come only from these sets, so no client can grow /metrics: any other method is
# "OTHER", a path no route matches (404, 405) is "unmatched".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
UNMATCHED_ROUTE = "unmatched"


def request_labels(rule: str | None, method: str) -> tuple[str, str]:
    """(endpoint, method) labels for a request: a route template and a known method, or the
    catch-all values."""
    return (
        rule if rule is not None else UNMATCHED_ROUTE,
        method if method in KNOWN_METHODS else OTHER_METHOD,
    )


class Metrics:
    """The app's metric objects (one set per app, registered on its own registry)."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_http_requests_total",
            "HTTP requests by endpoint, method and status.",
            ("endpoint", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_http_request_duration_seconds",
            "Request latency by endpoint (seconds).",
            ("endpoint", "method"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events = Counter(
            "recsys_events_total",
            "Posted events by outcome (accepted, duplicate, rejected).",
            ("status",),
            registry=self.registry,
        )
        self.interleaved = Counter(
            "recsys_interleaved_lists_total",
            "Team-draft interleaved lists served, by whether their teams were recorded "
            "(recorded, not_recorded).",
            ("status",),
            registry=self.registry,
        )
        self.model_info = Gauge(
            "recsys_model_version_info",
            "1 for each model version a worker serves.",
            ("model", "version"),
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.snapshot_published = Gauge(
            "recsys_snapshot_published_timestamp_seconds",
            "When the store snapshot being served was published (unix time).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self._versions: dict[str, str] = {}

    def set_model_versions(self, versions: dict[str, str]) -> None:
        """Record the versions now served (the previous ones drop to 0)."""
        for model, version in self._versions.items():
            if versions.get(model) != version:
                self.model_info.labels(model, version).set(0)
        for model, version in versions.items():
            self.model_info.labels(model, version).set(1)
        self._versions = dict(versions)

    def exposition(self) -> bytes:
        """The text format of every metric (all workers' when multiprocess)."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def init_app(app: Flask, metrics: Metrics) -> None:
    """Time every request and serve ``GET /metrics``."""
    app.extensions["recsys_metrics"] = metrics

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else None
            endpoint, method = request_labels(rule, request.method)
            metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
        return response

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)
