"""Several operator replicas share the experiments (`--sharded`): each experiment is handled by
one replica, the one rendezvous hashing of its uid picks among the live replicas, so a burst
is spread over them and a dead replica's experiments go to the others.

- Liveness: each replica holds a Lease (coordination.k8s.io) in the lease namespace and
  renews it every third of its duration. A peer is live while its lease keeps changing, timed
  by this replica's own clock (as client-go's leader election does: no clock is compared
  with another machine's); a peer that stops gracefully deletes its lease.
- Ownership: every kopf handler has `when=owned`; a replica is blind to the experiments of
  others (kopf stores nothing on them) and owns nothing while its own lease is not fresh.
- Finalizers: kopf removes its finalizer from an object none of its handlers match, so the
  replicas cannot share one; each has its own (`finalizer_for`). The legacy single-replica
  finalizer and those of dead replicas are taken off by the new owner (`handover_patch`).
- Handover: kopf acts on watch events, and a change of membership changes no object. So on
  each change, the replica that lost an experiment (when it is alive) or the one that gained
  it (when the loser is dead) patches the experiment's `handled-by` annotations: that event
  starts the new owner's timers and resumes a create the old one left unfinished, and stops
  the old owner's timers. Handlers are idempotent and workflow ids unique, so the seconds in
  which two replicas both believe they own an experiment repeat work but never duplicate a
  workflow."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from tempotrain_workers.api import FINALIZER, LABEL_PREFIX

from tempotrain_operator import kube, metrics

logger = logging.getLogger(__name__)

LEASE_LABEL = f"{LABEL_PREFIX}operator-replica"
LEASE_PREFIX = "tempotrain-operator."
HANDLED_BY = f"{LABEL_PREFIX}handled-by"
HANDLED_SINCE = f"{LABEL_PREFIX}handled-since"
_NAME_LIMIT = 63  # of a finalizer's name part (after the "/")
_LEASES_URL = "leases"
_LEASE_VERSION = "coordination.k8s.io/v1"


def owner_of(uid: str, members: Iterable[str]) -> str | None:
    """The replica that handles the object `uid` (rendezvous hashing: when a replica joins
    or leaves, only the objects it gains or loses move); None when there is no replica."""
    return max(
        members,
        key=lambda member: hashlib.sha256(f"{member}\0{uid}".encode()).digest(),
        default=None,
    )


def finalizer_for(identity: str) -> str:
    """The finalizer the replica `identity` puts on the experiments it owns."""
    name = FINALIZER.split("/", 1)[1]
    if len(f"{name}.{identity}") > _NAME_LIMIT:
        identity = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"{FINALIZER}.{identity}"


def is_operator_finalizer(finalizer: str) -> bool:
    """One of ours: a replica's, or the single operator's (before replicas)."""
    return finalizer == FINALIZER or finalizer.startswith(f"{FINALIZER}.")


def _renew_time(lease: Mapping[str, Any]) -> str | None:
    value = (lease.get("spec") or {}).get("renewTime")
    return str(value) if value else None


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Membership:
    """Which replicas are live, from the leases listed now and then (pure: times are given)."""

    identity: str
    lease_seconds: float
    _seen: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    _renewed_at: float | None = None  # when this replica's own lease was last renewed

    def renewed(self, at: float) -> None:
        self._renewed_at = at

    def observe(self, leases: Sequence[Mapping[str, Any]], at: float, wall: datetime) -> None:
        """`leases`: every replica's lease now (`at`: this clock; `wall`: UTC now). A lease
        seen for the first time counts from its renewTime when that is recent by the wall
        clock (a replica starting next to live ones), as stale otherwise (a crashed one's)."""
        seen: dict[str, tuple[str | None, float]] = {}
        for lease in leases:
            holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
            if not holder or holder == self.identity:
                continue
            token = _renew_time(lease)
            before = self._seen.get(holder)
            if before is not None and before[0] == token:
                seen[holder] = before
            elif before is not None:
                seen[holder] = (token, at)
            else:
                renewed = _parse_time(token) if token else None
                age = (wall - renewed).total_seconds() if renewed else self.lease_seconds
                seen[holder] = (token, at if age < self.lease_seconds else at - self.lease_seconds)
        self._seen = seen

    def members(self, at: float) -> frozenset[str]:
        """The live replicas; empty when this one's own lease is stale (it may have been
        given up by the others: it must not act on anything)."""
        if self._renewed_at is None or at - self._renewed_at >= self.lease_seconds:
            return frozenset()
        peers = {h for h, (_, changed) in self._seen.items() if at - changed < self.lease_seconds}
        return frozenset(peers | {self.identity})


def handover_patch(
    obj: Mapping[str, Any],
    new_owner: str | None,
    own_finalizer: str,
    live_finalizers: frozenset[str],
    now: datetime,
) -> dict[str, Any]:
    """The metadata patch handing `obj` to `new_owner` (None: the single operator): the
    annotations that make a watch event (every replica acts on it), and the finalizers of
    operators no longer running (`live_finalizers`: those of the ones that are) replaced by
    the owner's, `own_finalizer`. Guarded by the object's resourceVersion: a patch computed
    from an old version is refused."""
    meta = obj.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    kept = [f for f in finalizers if not is_operator_finalizer(f) or f in live_finalizers]
    dropped = len(kept) != len(finalizers)
    deleting = bool(meta.get("deletionTimestamp"))
    if dropped and not deleting and own_finalizer not in kept:
        # Never a moment without one of ours: a delete then would skip the cancellation.
        kept.append(own_finalizer)
    patch: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")}}
    if new_owner is not None:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        patch["metadata"]["annotations"] = {HANDLED_BY: new_owner, HANDLED_SINCE: stamp}
    if dropped:
        patch["metadata"]["finalizers"] = kept
    return patch


def dead_finalizers(obj: Mapping[str, Any], live_finalizers: frozenset[str]) -> bool:
    """Whether `obj` carries a finalizer of ours that no running operator will take off."""
    return any(
        is_operator_finalizer(f) and f not in live_finalizers
        for f in (obj.get("metadata") or {}).get("finalizers") or []
    )


def replica_finalizers(members: Iterable[str]) -> frozenset[str]:
    return frozenset(finalizer_for(member) for member in members)


Cancel = Callable[[dict[str, Any]], Awaitable[None]]


async def adopt(
    obj: dict[str, Any],
    new_owner: str | None,
    own_finalizer: str,
    live_finalizers: frozenset[str],
    cancel: Cancel | None,
) -> int:
    """Hand `obj` over (`handover_patch`): 1 when the patch landed, 0 when the object is
    gone. One being deleted whose finalizer was a dead operator's has its workflow cancelled
    first by `cancel` (the handler that would have is the dead one's). A conflict (the object
    changed meanwhile) reads it again, a few times."""
    for _ in range(3):
        meta = obj["metadata"]
        dead = dead_finalizers(obj, live_finalizers)
        if dead and meta.get("deletionTimestamp") and cancel is not None:
            await cancel(obj)
        patch = handover_patch(obj, new_owner, own_finalizer, live_finalizers, datetime.now(UTC))
        try:
            return 1 if await kube.patch_experiment(obj, patch) else 0
        except kube.Conflict:
            fresh = await kube.get_experiment(meta["namespace"], meta["name"], obj["kind"])
            if fresh is None:
                return 0
            obj = dict(fresh.raw)
    return 0


async def adopt_orphans(namespaces: Sequence[str], cancel: Cancel | None) -> int:
    """The single operator at its start: experiments holding a replica's finalizer (the
    operator ran as replicas before) get its own instead, else deleting them would hang."""
    live = frozenset({FINALIZER})
    adopted = 0
    for obj in await kube.list_experiments(namespaces):
        if dead_finalizers(obj, live):
            adopted += await adopt(obj, None, FINALIZER, live, cancel)
    return adopted


@dataclass
class Shard:
    """This replica's part: its lease, the live replicas, and the handovers. Renewing and
    watching the leases never waits for a handover (thousands of patches may take longer
    than a lease): the handovers run in a task of their own, on the newest membership."""

    identity: str
    lease_namespace: str
    namespaces: Sequence[str]  # served; empty: all
    lease_seconds: float
    # Cancels the workflow of an experiment being deleted whose owner died before it could
    # (the handler that would have is that owner's; its finalizer is taken off after this).
    cancel: Cancel | None = None
    membership: Membership = field(init=False)
    _seen_members: frozenset[str] | None = None  # the newest membership, as logged
    _handed_over: frozenset[str] | None = None  # the membership the handovers reflect
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.membership = Membership(self.identity, self.lease_seconds)

    @property
    def lease_name(self) -> str:
        return f"{LEASE_PREFIX}{self.identity}"

    def owns(self, uid: str) -> bool:
        members = self.membership.members(time.monotonic())
        return owner_of(uid, members) == self.identity

    async def start(self) -> None:
        """The first round (this replica's lease, its peers) before kopf handles anything,
        then a round every third of the lease's duration, and the handovers beside them."""
        await self._round()
        self._tasks = [
            asyncio.create_task(self._rounds(), name="tempotrain-shard-lease"),
            asyncio.create_task(self._handovers(), name="tempotrain-shard-handover"),
        ]

    async def stop(self) -> None:
        """Let the others take over now, not a lease's duration later."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await _lease_call("DELETE", self.lease_namespace, self.lease_name)

    async def _rounds(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._round()
            except Exception as err:  # the apiserver away: the lease goes stale, we stop owning
                logger.warning("replica lease round failed: %s", err)

    async def _round(self) -> None:
        started = time.monotonic()
        await self._renew()
        self.membership.renewed(started)
        leases = await _list_leases(self.lease_namespace)
        self.membership.observe(leases, time.monotonic(), datetime.now(UTC))
        members = self.membership.members(time.monotonic())
        metrics.REPLICAS.set(len(members))
        if members != self._seen_members:
            self._seen_members = members
            logger.info("live operator replicas: %s", ", ".join(sorted(members)) or "none")
            self._changed.set()

    async def _handovers(self) -> None:
        """The handovers each change of membership calls for, on the newest membership; one
        that fails is tried again a round later (the membership it starts from is kept)."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            members = self._seen_members
            if not members:  # this replica's own lease is stale: nothing is its to hand
                continue
            try:
                await self._hand_over(self._handed_over, members)
            except Exception as err:
                logger.warning("handover failed, tried again in a moment: %s", err)
                await asyncio.sleep(self.lease_seconds / 3)
                self._changed.set()
                continue
            self._handed_over = members

    async def _renew(self) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_seconds)),
            "renewTime": now,
        }
        url = f"{_LEASES_URL}/{self.lease_name}"
        if not await kube.merge_patch(_LEASE_VERSION, url, self.lease_namespace, {"spec": spec}):
            lease = {
                "apiVersion": _LEASE_VERSION,
                "kind": "Lease",
                "metadata": {
                    "name": self.lease_name,
                    "namespace": self.lease_namespace,
                    "labels": {LEASE_LABEL: "true"},
                },
                "spec": spec | {"acquireTime": now},
            }
            await _lease_call("POST", self.lease_namespace, None, lease)

    async def _hand_over(self, before: frozenset[str] | None, now: frozenset[str]) -> None:
        """Patch the experiments whose owner changed and whose old owner cannot say so (see
        the module's doc); at start (`before` None), those holding a dead operator's
        finalizer only: kopf's first listing resumes the rest."""
        live = replica_finalizers(now)
        moved = 0
        for obj in await kube.list_experiments(self.namespaces):
            uid = str(obj["metadata"]["uid"])
            owner = owner_of(uid, now)
            if before is None:
                due = owner == self.identity and dead_finalizers(obj, live)
            else:
                previous = owner_of(uid, before)
                lost = previous == self.identity and owner != self.identity
                gained = owner == self.identity and previous != self.identity
                due = lost or (gained and (previous not in now or dead_finalizers(obj, live)))
            if due and owner is not None:
                mine = owner == self.identity
                cancel = self.cancel if mine else None  # the owner cancels, never a loser
                moved += await adopt(obj, owner, finalizer_for(owner), live, cancel)
        if moved:
            metrics.HANDOVERS.inc(moved)
            logger.info("handed over %d experiment(s) (replicas: %s)", moved, sorted(now))


async def _lease_call(
    method: str,
    namespace: str,
    name: str | None,
    body: dict[str, Any] | None = None,
) -> None:
    """A POST (no `name`) or DELETE of a lease (its PATCH: `kube.merge_patch`)."""
    api = await kube.client()
    async with api.call_api(
        method,
        version=_LEASE_VERSION,
        url=f"{_LEASES_URL}/{name}" if name else _LEASES_URL,
        namespace=namespace,
        content=json.dumps(body) if body is not None else None,
    ):
        pass


async def _list_leases(namespace: str) -> list[dict[str, Any]]:
    api = await kube.client()
    async with api.call_api(
        "GET",
        version=_LEASE_VERSION,
        url=_LEASES_URL,
        namespace=namespace,
        params={"labelSelector": f"{LEASE_LABEL}=true"},
    ) as response:
        items: list[dict[str, Any]] = response.json().get("items") or []
        return items


# This process's shard; None: a single operator (every experiment is its own).
current: Shard | None = None


def mark(meta: Mapping[str, Any], patch: kopf.Patch) -> None:
    """Say on the experiment which replica reconciles it (`kubectl get ... -o yaml`); in
    the handler's own patch, so it costs no request. Nothing for a single operator."""
    if current is not None and (meta.get("annotations") or {}).get(HANDLED_BY) != current.identity:
        patch.metadata.annotations[HANDLED_BY] = current.identity


def owned(uid: str | None = None, **_: Any) -> bool:
    """kopf's `when=` on every handler: whether this replica handles the object."""
    return current is None or (uid is not None and current.owns(uid))
