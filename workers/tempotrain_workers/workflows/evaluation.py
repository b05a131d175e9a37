"""BertEvalWorkflow and BertInferenceWorkflow: thin wrappers over their activities."""

from __future__ import annotations

from datetime import timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from tempotrain_workers.api import (
        NON_RETRYABLE_ERRORS,
        WORK_HEARTBEAT_TIMEOUT,
        BertEvalRequest,
        BertEvalResult,
        BertInferenceRequest,
        BertInferenceResult,
    )

RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=NON_RETRYABLE_ERRORS)


@workflow.defn(failure_exception_types=[ValidationError])
class BertEvalWorkflow:
    @workflow.run
    async def run(self, request: BertEvalRequest) -> BertEvalResult:
        result: BertEvalResult = await workflow.execute_activity(
            "run_bert_evaluation",
            request,
            result_type=BertEvalResult,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=WORK_HEARTBEAT_TIMEOUT,
            retry_policy=RETRY,
        )
        return result


@workflow.defn(failure_exception_types=[ValidationError])
class BertInferenceWorkflow:
    @workflow.run
    async def run(self, request: BertInferenceRequest) -> BertInferenceResult:
        result: BertInferenceResult = await workflow.execute_activity(
            "run_bert_inference",
            request,
            result_type=BertInferenceResult,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=WORK_HEARTBEAT_TIMEOUT,
            retry_policy=RETRY,
        )
        return result
