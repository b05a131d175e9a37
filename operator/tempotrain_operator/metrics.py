"""The operator's Prometheus metrics, served at `/metrics` on its `--metrics-port` (the
endpoint is the workers' one: `tempotrain_workers.metrics.serve`)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from prometheus_client import Counter, Gauge, Histogram

P = ParamSpec("P")
R = TypeVar("R")

RECONCILE_SECONDS = Histogram(
    "tempotrain_operator_reconcile_seconds",
    "One reconcile of an experiment (children, claims, the workflow's start), by kind",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_PUSHES = Counter(
    "tempotrain_operator_status_pushes", "Status updates workflows pushed, by kind", ["kind"]
)
STATUS_PUSH_LAG_SECONDS = Histogram(
    "tempotrain_operator_status_push_lag_seconds",
    "From the workflow's update to the operator handling it",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WORKFLOWS_STARTED = Counter(
    "tempotrain_operator_workflows_started", "Workflows the operator started, by kind", ["kind"]
)
WORKFLOWS_FAILED = Counter(
    "tempotrain_operator_workflows_failed", "Runs that ended Failed, by kind", ["kind"]
)
CHILDREN_CREATED = Counter(
    "tempotrain_operator_children_created",
    "Objects created for experiments (claims, Deployments, RayClusters, ...), by their kind",
    ["kind"],
)
KUBE_REQUESTS = Counter(
    "tempotrain_operator_kube_requests",
    "apiserver requests of the operator's handlers (kr8s), by method and status code; "
    "kopf's own watch streams and handler-result patches are not counted",
    ["method", "code"],
)
REPLICAS = Gauge(
    "tempotrain_operator_replicas",
    "Live operator replicas this one sees (--sharded; 1 for a single operator)",
)
HANDOVERS = Counter(
    "tempotrain_operator_handovers",
    "Experiments this replica handed over, or took over from a dead one (--sharded)",
)


def timed_reconcile(
    kind: str,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Times every call of a kind's reconcile, however it ends (a TemporaryError included).
    `functools.wraps` keeps the handler's name, which kopf derives its handler id from."""

    def decorate(reconcile: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(reconcile)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await reconcile(*args, **kwargs)
            finally:
                RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

        return timed

    return decorate


class CountKubeRequests(logging.Filter):
    """httpx logs every request kr8s makes (`HTTP Request: GET <url> "HTTP/1.1 200 OK"`):
    counted here, and dropped (one line per request would be most of the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == 'HTTP Request: %s %s "%s %d %s"' and len(record.args or ()) == 5:
            method, _, _, code, _ = record.args  # type: ignore[misc]
            KUBE_REQUESTS.labels(str(method), str(code)).inc()
            return False
        return True


def count_kube_requests() -> None:
    httpx = logging.getLogger("httpx")
    httpx.setLevel(logging.INFO)  # its request lines must be made to be counted
    httpx.addFilter(CountKubeRequests())


def observe_push(kind: str, sent_at: datetime) -> None:
    """A status push, and how long after the workflow made it (its time: UTC)."""
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    STATUS_PUSHES.labels(kind).inc()
    lag = (datetime.now(UTC) - sent_at).total_seconds()
    STATUS_PUSH_LAG_SECONDS.labels(kind).observe(max(0.0, lag))
