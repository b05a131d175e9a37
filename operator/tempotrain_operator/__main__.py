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
from tempotrain_operator import batch_inference, bert_experiment, cifar10_scaling, metrics, queueing
from tempotrain_operator.runtime import Runtime
from tempotrain_operator.settings import parse_settings
from tempotrain_operator.status_sink import run_status_sink


class QuietTimers(logging.Filter):
    """kopf logs every timer run at INFO; the progress (5 s) and resync timers would fill
    the log with one line per experiment per tick. Their failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Timer '") and message.endswith("' succeeded."))


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
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.batching.worker_limit = 64
    # A deleted experiment waits for its timers (progress, resync) to stop. One caught mid-run
    # is awaited this long, then looked at again every 2 s: kopf's default re-check is 60 s,
    # which held `kubectl delete` of a finished experiment for a minute.
    settings.background.instant_exit_timeout = 5.0
    settings.background.cancellation_polling = 2.0
    runtime: Runtime = memo.runtime
    memo.sink_stop = asyncio.Event()
    memo.sink = asyncio.create_task(
        run_status_sink(runtime.client, runtime.settings.status_queue, memo.sink_stop)
    )


@kopf.on.cleanup()
async def stop_sink(memo: kopf.Memo, **_: Any) -> None:
    memo.sink_stop.set()
    await asyncio.wait_for(memo.sink, timeout=30)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
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
