"""`train_cifar10_scale`: runs one scale's Ray Train driver and supervises it.

The driver (`tempotrain_workers.cifar.driver`) runs as a subprocess next to this worker (a
local Ray, or a Ray address this machine can join), or as a Ray Job on the cluster's head
when the address is the head's `http://...:8265` (KubeRay). Either way this activity
heartbeats with the last epoch's figures, stops the driver when cancelled, and maps its exit
code to a Temporal error: retryable (Ray Train restores from the last checkpoint on the next
attempt) or not (Ray/torch missing, Ray unreachable).

No torch or ray import at module level: the operator image imports the workers package.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from tempotrain_workers import metrics
from tempotrain_workers.api import ErrorType, ScaleTrainRequest, ScaleTrainResult
from tempotrain_workers.cifar.driver import EXIT_DEPENDENCY, EXIT_RAY_UNAVAILABLE
from tempotrain_workers.cifar.layout import ScaleLayout
from tempotrain_workers.errors import non_retryable
from tempotrain_workers.subprocesses import die_with_parent

STOP_GRACE_SECONDS = 60
POLL_SECONDS = 2.0
JOBS_CONNECT_ATTEMPTS = 3
JOBS_CALL_SECONDS = 60.0
RAY_UNAVAILABLE_ATTEMPTS = 4  # Temporal attempts (backoff 5 s, 10 s, 20 s) before giving up
REQUIRED_MODULES = ("ray.train", "torch", "torchvision")


class DriverRun(Protocol):
    async def wait(self, within: float) -> int | None:
        """The exit code once finished, None while still running after `within` seconds."""

    async def stop(self) -> None: ...

    def log_tail(self) -> str: ...


class LocalDriver:
    """The driver as a child process: its own process group, killed with the worker."""

    def __init__(self, process: asyncio.subprocess.Process, log_file: Path) -> None:
        self.process = process
        self.log_file = log_file
        self._exited = asyncio.ensure_future(process.wait())  # one waiter, polled many times

    @classmethod
    async def start(cls, job_file: Path, log_file: Path) -> LocalDriver:
        command = [sys.executable, "-m", "tempotrain_workers.cifar.driver", str(job_file)]
        with log_file.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdout=log,
                stderr=log,
                start_new_session=True,  # one signal reaches the driver and the Ray it started
                preexec_fn=die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return cls(process, log_file)

    async def wait(self, within: float) -> int | None:
        done, _ = await asyncio.wait({self._exited}, timeout=within)
        return self._exited.result() if done else None

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        self._signal_group(signal.SIGTERM)  # the driver shuts its Ray down on the way out
        if await self.wait(STOP_GRACE_SECONDS) is None:
            self._signal_group(signal.SIGKILL)
            await self.process.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def log_tail(self) -> str:
        return _tail(self.log_file)


class RayJobDriver:
    """The driver as a Ray Job on the cluster's head node (address `http://head:8265`)."""

    def __init__(self, client: Any, submission_id: str, log_file: Path) -> None:
        self.client = client
        self.submission_id = submission_id
        self.log_file = log_file

    @classmethod
    async def start(
        cls, address: str, job_file: Path, log_file: Path, run_key: str, attempt: int
    ) -> RayJobDriver:
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = await _jobs_client(JobSubmissionClient, address)
        # A worker that died mid-scale left its job running: attach instead of starting twice.
        for previous in range(attempt - 1, 0, -1):
            submission_id = f"{run_key}-a{previous}"
            try:
                status = await _jobs_call(client.get_job_status, submission_id)
            except Exception:
                continue
            if status in (JobStatus.PENDING, JobStatus.RUNNING):
                return cls(client, submission_id, log_file)
        submission_id = f"{run_key}-a{attempt}"
        entrypoint = shlex.join(
            [
                "python",
                "-m",
                "tempotrain_workers.cifar.driver",
                str(job_file),
                "--ray-address",
                "auto",
            ]
        )
        await _jobs_call(client.submit_job, entrypoint=entrypoint, submission_id=submission_id)
        return cls(client, submission_id, log_file)

    async def wait(self, within: float) -> int | None:
        from ray.job_submission import JobStatus

        await asyncio.sleep(within)  # a remote job can only be polled
        info = await _jobs_call(self.client.get_job_info, self.submission_id)
        if info.status in (JobStatus.PENDING, JobStatus.RUNNING):
            return None
        self.log_file.write_text(await _jobs_call(self.client.get_job_logs, self.submission_id))
        if info.status == JobStatus.SUCCEEDED:
            return 0
        return info.driver_exit_code if info.driver_exit_code is not None else 1

    async def stop(self) -> None:
        """Stop the job and wait (bounded) until Ray reports it ended."""
        await _jobs_call(self.client.stop_job, self.submission_id)
        deadline = asyncio.get_running_loop().time() + STOP_GRACE_SECONDS
        status = None
        while asyncio.get_running_loop().time() < deadline:
            status = await _jobs_call(self.client.get_job_status, self.submission_id)
            if status.is_terminal():
                return
            await asyncio.sleep(POLL_SECONDS)
        activity.logger.warning("Ray job %s still %s after stop", self.submission_id, status)

    def log_tail(self) -> str:
        return _tail(self.log_file)


async def _jobs_call(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The Ray Jobs SDK sets no HTTP timeout: a head that vanished mid-request would hold this
    worker's only activity slot forever."""
    return await asyncio.wait_for(asyncio.to_thread(call, *args, **kwargs), JOBS_CALL_SECONDS)


async def _jobs_client(factory: Any, address: str) -> Any:
    """Connect to the Ray Jobs API, retrying briefly (a head pod may be restarting)."""
    delay = 1.0
    for attempt in range(1, JOBS_CONNECT_ATTEMPTS + 1):
        try:
            return await _jobs_call(factory, address)
        except Exception as err:
            if attempt == JOBS_CONNECT_ATTEMPTS:
                raise ray_unavailable(
                    f"no Ray Jobs API at {address} after {attempt} attempts: {err}"
                ) from err
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def ray_unavailable(message: str) -> ApplicationError:
    """Retryable for the first attempts (a head pod restarting between scales must not fail
    the experiment); after that, a clear non-retryable error instead of retrying for days."""
    if activity.info().attempt < RAY_UNAVAILABLE_ATTEMPTS:
        return ApplicationError(message, type="RayUnreachable")
    return non_retryable(ErrorType.RAY_UNAVAILABLE, message)


def _tail(log_file: Path, lines: int = 25) -> str:
    if not log_file.is_file():
        return ""
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


class ScaleSupervisor:
    def __init__(self, request: ScaleTrainRequest, runs_root: Path, datasets_dir: Path) -> None:
        self.request = request
        self.layout = ScaleLayout(runs_root / request.run_id, request.scale_name)
        self.datasets_dir = datasets_dir

    async def run(self) -> ScaleTrainResult:
        missing = [m for m in REQUIRED_MODULES if not _importable(m)]
        if missing:
            raise non_retryable(
                ErrorType.DEPENDENCY_MISSING,
                f"this worker cannot run Ray Train: {', '.join(missing)} not installed "
                "(install tempotrain[workers])",
            )
        layout = self.layout
        layout.own_dir.mkdir(parents=True, exist_ok=True)
        layout.result_file.unlink(missing_ok=True)
        job = {
            "request": self.request.model_dump(mode="json"),
            "storage_path": str(layout.storage_path),
            "datasets_dir": str(self.datasets_dir),
        }
        layout.job_file.write_text(json.dumps(job, indent=2))
        info = activity.info()
        activity.logger.info(
            "scale %s (attempt %d) on Ray at %s",
            self.request.scale_name,
            info.attempt,
            self.request.ray_address,
        )
        driver = await self._start(info.attempt)
        interval = max(1.0, min(POLL_SECONDS, self.request.heartbeat_timeout_seconds / 4))
        try:
            while (code := await driver.wait(interval)) is None:
                progress = self._progress()
                self._meter(progress)
                activity.heartbeat(progress)
        except asyncio.CancelledError:
            activity.logger.info("cancelled: stopping the Ray Train driver")
            await driver.stop()
            raise
        outcome = self._outcome(code, driver.log_tail())
        self._meter({"images_per_second": outcome.images_per_second, "epoch": outcome.epochs})
        return outcome

    def _meter(self, progress: dict[str, Any]) -> None:
        request = self.request
        metrics.scale_progressed(
            str(request.run_id), request.scale_name, request.scale.workers, progress
        )

    async def _start(self, attempt: int) -> DriverRun:
        address = self.request.ray_address
        log_file = self.layout.own_dir / f"driver-attempt-{attempt}.log"
        if address.startswith(("http://", "https://")):
            # The workflow id carries the CR's uid: a re-created experiment never attaches to
            # (or collides with) its predecessor's jobs on a long-lived Ray cluster.
            workflow_id = activity.info().workflow_id or self.request.run_id
            run_key = f"{workflow_id}-{self.request.scale_name}"
            return await RayJobDriver.start(
                address, self.layout.job_file, log_file, run_key, attempt
            )
        return await LocalDriver.start(self.layout.job_file, log_file)

    def _progress(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.layout.progress_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _outcome(self, code: int, log_tail: str) -> ScaleTrainResult:
        if code == EXIT_DEPENDENCY:
            raise non_retryable(ErrorType.DEPENDENCY_MISSING, log_tail)
        if code == EXIT_RAY_UNAVAILABLE:
            raise ray_unavailable(f"Ray unreachable at {self.request.ray_address}:\n{log_tail}")
        if code != 0 or not self.layout.result_file.is_file():
            raise ApplicationError(
                f"scale {self.request.scale_name} failed (driver exit {code}):\n{log_tail}",
                type="ScaleFailed",
            )
        return ScaleTrainResult.model_validate_json(self.layout.result_file.read_text())


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False
