"""The client: experiments through the Kubernetes API (kr8s), histories and logs through the
runs volume as this machine sees it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kr8s
import yaml
from kr8s.objects import APIObject, PersistentVolume, PersistentVolumeClaim, new_class
from pydantic import BaseModel
from tempotrain_workers import history
from tempotrain_workers.api import (
    API_VERSION,
    TERMINAL_PHASES,
    BatchInferenceSpec,
    BertExperimentSpec,
    Cifar10ScalingSpec,
)

KINDS: dict[str, type[APIObject]] = {
    kind: new_class(f"{kind}.{API_VERSION}", namespaced=True, plural=plural)
    for kind, plural in (
        ("BertExperiment", "bertexperiments"),
        ("Cifar10Scaling", "cifar10scalings"),
        ("BatchInference", "batchinferences"),
    )
}
SPEC_KINDS: dict[type[BaseModel], str] = {
    BertExperimentSpec: "BertExperiment",
    Cifar10ScalingSpec: "Cifar10Scaling",
    BatchInferenceSpec: "BatchInference",
}
# What a user may type for a kind: its name, plural or short name, any case.
ALIASES = {
    alias: kind
    for kind, names in {
        "BertExperiment": ("bertexperiment", "bertexperiments", "bexp"),
        "Cifar10Scaling": ("cifar10scaling", "cifar10scalings", "c10s"),
        "BatchInference": ("batchinference", "batchinferences", "binf"),
    }.items()
    for alias in names
}
TERMINAL = {str(p) for p in TERMINAL_PHASES}


class ClientError(Exception):
    """What the user did not get, and why, in words for the terminal."""


def kind_of(name: str) -> str:
    try:
        return ALIASES[name.lower()]
    except KeyError:
        raise ClientError(f"unknown kind {name!r}: one of {', '.join(sorted(ALIASES))}") from None


@dataclass(frozen=True)
class Experiment:
    """One experiment as `get` returns it: the object's kind, name, spec and status."""

    kind: str
    name: str
    namespace: str
    spec: dict[str, Any]
    status: dict[str, Any]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Experiment:
        meta = raw["metadata"]
        return cls(
            raw["kind"], meta["name"], meta["namespace"], raw.get("spec") or {},
            raw.get("status") or {},
        )  # fmt: skip

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "")

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        """A sweep's rows by trial name (empty for a single run)."""
        return dict(sorted((self.status.get("trialRuns") or {}).items()))


class TempoTrain:
    """`namespace`: default the kubeconfig context's; `runs_root`: where this machine sees
    the runs volume (default: found from the experiment's claim when its volume is a local
    path, as on the local platform; or $TEMPOTRAIN_RUNS_ROOT)."""

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        runs_root: Path | None = None,
    ) -> None:
        self.api = kr8s.api(kubeconfig=kubeconfig) if kubeconfig else kr8s.api()
        self.namespace = namespace or self.api.namespace or "default"
        env_root = os.environ.get("TEMPOTRAIN_RUNS_ROOT")
        self.runs_root = runs_root or (Path(env_root) if env_root else None)

    # -- the objects -----------------------------------------------------------------------
    def submit(
        self, source: str | Path | dict[str, Any] | BaseModel, name: str | None = None
    ) -> list[Experiment]:
        """A YAML file (one or more documents), a manifest, or a spec model and its name."""
        manifests: list[dict[str, Any]]
        if isinstance(source, BaseModel):
            if name is None:
                raise ClientError("a spec needs a name: submit(spec, name=...)")
            kind = SPEC_KINDS.get(type(source))
            if kind is None:
                raise ClientError(f"{type(source).__name__} is not an experiment spec")
            wire = source.model_dump(mode="json", by_alias=True, exclude_none=True)
            manifests = [
                {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": wire}
            ]
        elif isinstance(source, dict):
            manifests = [source]
        else:
            manifests = [d for d in yaml.safe_load_all(Path(source).read_text()) if d]
        created = []
        for manifest in manifests:
            kind = manifest.get("kind", "")
            if kind not in KINDS:
                raise ClientError(f"{kind or 'a document without kind'} is not a TempoTrain kind")
            manifest.setdefault("metadata", {}).setdefault("namespace", self.namespace)
            obj = KINDS[kind](manifest, api=self.api)
            try:
                obj.create()
            except kr8s.ServerError as err:
                raise ClientError(_refusal(err)) from err
            created.append(Experiment.of(obj.raw))
        return created

    def get(self, name: str, kind: str = "BertExperiment") -> Experiment:
        return Experiment.of(self._object(name, kind).raw)

    def experiments(self) -> list[Experiment]:
        """Every experiment of the namespace, of the three kinds."""
        found = []
        for cls in KINDS.values():
            resource = f"{cls.endpoint}.{cls.version.split('/')[0]}"
            for obj in self.api.get(resource, namespace=self.namespace):
                # A kr8s object (its class may be kr8s's own for the kind): its raw dict.
                raw: dict[str, Any] = obj if isinstance(obj, dict) else obj.raw
                found.append(Experiment.of(raw))
        return found

    def delete(self, name: str, kind: str = "BertExperiment") -> None:
        """Cancels its workflow (a trainer saves first); Retain claims keep the data."""
        self._object(name, kind).delete()

    def suspend(self, name: str, kind: str = "BertExperiment", suspended: bool = True) -> None:
        """spec.suspend: save a verified checkpoint and free the compute; `resume` undoes it."""
        self._object(name, kind).patch({"spec": {"suspend": suspended}})

    def resume(self, name: str, kind: str = "BertExperiment") -> None:
        self.suspend(name, kind, suspended=False)

    def wait(
        self, name: str, kind: str = "BertExperiment", timeout: float = 86_400, every: float = 2
    ) -> Experiment:
        """Until it has ended (Succeeded, Failed, Cancelled); TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            experiment = self.get(name, kind)
            if experiment.finished:
                return experiment
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still {experiment.phase} after {timeout:.0f}s")
            time.sleep(every)

    def _object(self, name: str, kind: str) -> APIObject:
        try:
            return KINDS[kind].get(name, namespace=self.namespace, api=self.api)
        except kr8s.NotFoundError:
            raise ClientError(f"{kind} {self.namespace}/{name} not found") from None

    # -- the runs volume -------------------------------------------------------------------
    def history(
        self, name: str, trial: str | None = None
    ) -> dict[str, list[history.HistoryRecord]]:
        """The training history per run: {run name: records}; a sweep: one per trial (or the
        one asked for), a single experiment: one."""
        return {
            label: history.read(path) for label, path in self._history_paths(name, trial).items()
        }

    def log_files(self, name: str, trial: str | None = None) -> list[Path]:
        """The trainer's logs, newest attempt last (a sweep: the trial's)."""
        paths = self._history_paths(name, trial)
        if len(paths) != 1:
            raise ClientError(f"{name} is a sweep: name one of its trials ({', '.join(paths)})")
        run_dir = next(iter(paths.values())).parent  # the history is at the run's root
        return sorted((run_dir / "logs").glob("trainer-attempt-*.log"), key=_attempt)

    def _history_paths(self, name: str, trial: str | None) -> dict[str, Path]:
        """{run name: its history file where this machine sees it}."""
        experiment = self.get(name)
        root = self.runs_dir(experiment)
        return {label: root / path for label, path in _history_files(experiment, trial).items()}

    def runs_dir(self, experiment: Experiment) -> Path:
        """Where this machine sees the experiment's runs volume."""
        if self.runs_root is not None:
            return self.runs_root
        claim = experiment.status.get("runsClaim")
        path = self._local_path(claim) if claim else None
        if path is None or not path.is_dir():
            raise ClientError(
                f"the runs volume of {experiment.name} (claim {claim}) is not a folder on this "
                "machine: pass --runs-root (or TEMPOTRAIN_RUNS_ROOT) where it is mounted"
            )
        return path

    def _local_path(self, claim: str) -> Path | None:
        try:
            pvc = PersistentVolumeClaim.get(claim, namespace=self.namespace, api=self.api)
            volume = PersistentVolume.get(pvc.raw["spec"]["volumeName"], api=self.api)
        except (kr8s.NotFoundError, KeyError):
            return None
        spec = volume.raw["spec"]
        local = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        return Path(local) if local else None


def _history_files(experiment: Experiment, trial: str | None) -> dict[str, str]:
    trials = experiment.trials
    if trials:
        if trial is not None and trial not in trials:
            raise ClientError(f"{experiment.name} has no trial {trial}: {', '.join(trials)}")
        return {n: r["historyFile"] for n, r in trials.items() if trial in (None, n)}
    single = experiment.status.get("historyFile")
    if not single:
        raise ClientError(f"{experiment.name} reports no history (not started yet?)")
    return {experiment.name: single}


def _attempt(path: Path) -> int:
    digits = path.stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def _refusal(err: kr8s.ServerError) -> str:
    """The apiserver's own words (they name the field path), not a stack trace."""
    response = err.response
    if response is not None:
        try:
            return str(response.json().get("message") or err)
        except ValueError:
            pass
    return str(err)
