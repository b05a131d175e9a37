"""`python -m tempotrain_operator`: the kopf operator plus its Temporal status sink."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import kopf
from tempotrain_workers.api import FINALIZER, GROUP
from tempotrain_workers.metrics import serve as serve_metrics

# Importing the handler modules registers their handlers.
from tempotrain_operator import (
    batch_inference,
    bert_experiment,
    cifar10_scaling,
    indexes,
    lifecycle,
    metrics,
    queueing,
    run_events,
    sharding,
)
from tempotrain_operator.runtime import Runtime
from tempotrain_operator.settings import parse_settings
from tempotrain_operator.status_sink import run_status_sink


class QuietTimers(logging.Filter):
    """kopf logs every timer run at INFO; the progress (5 s) and resync timers would fill
    the log with one line per experiment per tick; and every run of the event handler that
    turns phase changes into Events (each watch event). Their failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        timer = message.startswith("Timer '") and message.endswith("' succeeded.")
        return not (timer or message == f"Handler '{run_events.HANDLER_ID}' succeeded.")


logging.getLogger("kopf.objects").addFilter(QuietTimers())
# kr8s's HTTP client logs every apiserver request at INFO: counted, and kept out of the log.
metrics.count_kube_requests()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress in annotations, not in .status: the status schema stays strict and ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    runtime: Runtime = memo.runtime
    settings.persistence.finalizer = FINALIZER
    if runtime.settings.sharded:
        # Before kopf handles anything: which experiments are this replica's.
        settings.persistence.finalizer = sharding.finalizer_for(runtime.settings.identity)
        sharding.current = await start_shard(runtime)
    else:
        await adopt_orphans(runtime)
    # Events for warnings and errors only: the operator's own Normal events (`kube.tell`,
    # `run_events`) tell a run's story; kopf's "Handler ... succeeded" lines were most of
    # the events a creation posted.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    indexes.register(settings)
    # No limit on kopf's workers (its default). With indexes, each object of a watch's first
    # listing holds its worker until every index is populated: a limit below the number of
    # pods (or claims, or events) at start left the rest waiting for a worker forever, and
    # no experiment was ever handled.
    # A deleted experiment waits for its timers (progress, resync) to stop. One caught mid-run
    # is awaited this long, then looked at again every 2 s: kopf's default re-check is 60 s,
    # which held `kubectl delete` of a finished experiment for a minute.
    settings.background.instant_exit_timeout = 5.0
    settings.background.cancellation_polling = 2.0
    memo.sink_stop = asyncio.Event()
    memo.sink = asyncio.create_task(
        run_status_sink(runtime.client, runtime.settings.status_queue, memo.sink_stop)
    )


def cancel_for(runtime: Runtime) -> sharding.Cancel:
    """Cancels the workflow of an experiment being deleted whose operator died before it
    could (bounded: `lifecycle.cancel_workflow`)."""
    log = logging.getLogger("tempotrain_operator.sharding")

    async def cancel(experiment: dict[str, Any]) -> None:
        await lifecycle.cancel_workflow(lifecycle.workflow_of(experiment), runtime, log)

    return cancel


async def adopt_orphans(runtime: Runtime) -> None:
    """Replicas ran before this single operator: their finalizers, which no one would take
    off, would hold deleted experiments forever."""
    try:
        adopted = await sharding.adopt_orphans(runtime.settings.namespaces, cancel_for(runtime))
    except Exception as err:  # never a reason not to start
        logging.getLogger(__name__).warning("replicas' finalizers not looked for: %s", err)
        return
    if adopted:
        logging.getLogger(__name__).info("took over %d experiment(s) from replicas", adopted)


async def start_shard(runtime: Runtime) -> sharding.Shard:
    shard = sharding.Shard(
        identity=runtime.settings.identity,
        lease_namespace=runtime.settings.lease_namespace,
        namespaces=runtime.settings.namespaces,
        lease_seconds=runtime.settings.lease_seconds,
        cancel=cancel_for(runtime),
    )
    await shard.start()
    return shard


@kopf.on.cleanup()
async def stop_sink(memo: kopf.Memo, **_: Any) -> None:
    memo.sink_stop.set()
    await asyncio.wait_for(memo.sink, timeout=30)
    if sharding.current is not None:  # the others take over now, not a lease later
        await sharding.current.stop()


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    # kopf's formatter: each line about an experiment says which ("[namespace/name] ...").
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True)
    bert_experiment.register_resync(settings.resync_seconds)
    bert_experiment.register_progress(settings.progress_seconds)
    cifar10_scaling.register_resync(settings.resync_seconds)
    batch_inference.register_resync(settings.resync_seconds)
    if settings.kueue:
        for plural, reconcile in (
            (bert_experiment.PLURAL, bert_experiment.bertexperiment_reconcile),
            (cifar10_scaling.PLURAL, cifar10_scaling.cifar10scaling_reconcile),
            (batch_inference.PLURAL, batch_inference.batchinference_reconcile),
        ):
            queueing.register_queue_timer(plural, reconcile, settings.queue_seconds)
    runtime = Runtime(settings)
    if settings.metrics_port:
        serve_metrics(settings.metrics_port)
    asyncio.run(
        kopf.operator(
            # Every handler a cause calls for in one cycle, one patch of their outcomes: kopf's
            # default (asap) runs one per cycle, and a creation's three handlers cost three
            # patches of the object, three of its status and three watch events to process.
            lifecycle=kopf.lifecycles.all_at_once,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=settings.liveness_endpoint,
            memo=kopf.Memo(runtime=runtime),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
