"""Errors that must not be retried: bad input fails fast, with a type and a clear message."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from tempotrain_workers.api import ErrorType


def non_retryable(kind: ErrorType, message: str) -> ApplicationError:
    return ApplicationError(message, type=str(kind), non_retryable=True)
