"""The few Kubernetes calls the operator makes, through kr8s (async)."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import (
    APIObject,
    Deployment,
    Event,
    PersistentVolumeClaim,
    new_class,
)
from tempotrain_workers.api import API_VERSION, LABEL_PREFIX

from tempotrain_operator import conditions, metrics
from tempotrain_operator.children import TEMPLATE_HASH

BertExperimentResource = new_class(
    f"BertExperiment.{API_VERSION}", namespaced=True, plural="bertexperiments"
)
Cifar10ScalingResource = new_class(
    f"Cifar10Scaling.{API_VERSION}", namespaced=True, plural="cifar10scalings"
)
BatchInferenceResource = new_class(
    f"BatchInference.{API_VERSION}", namespaced=True, plural="batchinferences"
)
RayCluster = new_class("RayCluster.ray.io/v1", namespaced=True, plural="rayclusters")

EXPERIMENT_KINDS: dict[str, type[APIObject]] = {
    "BertExperiment": BertExperimentResource,
    "Cifar10Scaling": Cifar10ScalingResource,
    "BatchInference": BatchInferenceResource,
}
_KINDS: dict[str, type[APIObject]] = {
    "Deployment": Deployment,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "RayCluster": RayCluster,
}


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, kr8s.asyncio.Api] = (
    weakref.WeakKeyDictionary()
)


async def client() -> kr8s.asyncio.Api:
    """The kr8s client of this event loop, made once and held. Every kr8s object given
    none (`await Kind(manifest)`, `Kind.get(...)`) calls `kr8s.asyncio.api()`, which re-reads
    the kubeconfig and GETs /version each time, and caches its client weakly: one nobody
    holds is built again, with a new TLS session. Under a burst of 500 experiments that was
    a third of the operator's CPU and a /version request per object (py-spy)."""
    loop = asyncio.get_running_loop()
    found = _clients.get(loop)
    if found is None:
        found = _clients[loop] = await kr8s.asyncio.api()
    return found


async def bind(kind: type[APIObject], manifest: dict[str, Any]) -> APIObject:
    """A kr8s object of `kind` for `manifest` on the held client (no request)."""
    return kind(manifest, api=await client())


async def create_if_absent(manifest: dict[str, Any]) -> bool:
    """Create the object unless one of that name exists; True when this call created it.
    A plain POST: a kr8s object's `create` converts the manifest, a copy of it and the
    answer to Box objects, which was a quarter of the operator's CPU under a burst."""
    kind = _KINDS[manifest["kind"]]
    api = await client()
    try:
        async with api.call_api(
            "POST",
            version=kind.version,
            url=kind.endpoint,
            namespace=manifest["metadata"].get("namespace"),
            content=json.dumps(manifest),
        ):
            pass
    except kr8s.ServerError as err:
        if err.response is not None and err.response.status_code == 409:
            return False
        raise
    return True


def tell(obj: kopf.Body, *, reason: str, message: str) -> None:
    """A Normal event about the experiment. Through kopf.event, which posts it whatever
    kopf's posting level: that level is WARNING (`__main__`), because kopf's own INFO lines
    ("Handler ... succeeded", "Creation is processed") were four of the seven events an
    experiment's creation posted, each an apiserver write."""
    kopf.event(obj, type="Normal", reason=reason, message=message)


async def create_children(owner: kopf.Body, children: list[dict[str, Any]]) -> None:
    """Create each child that does not exist yet; an API error retries the handler. One that
    exists must be this experiment's: another kind's of the same name (a BertExperiment and
    a Cifar10Scaling both called `x`) is never shared. A Deployment of ours is brought to
    the spec as it is now (an edit made while the experiment was being created, or while
    the operator was away)."""
    owner_kind, owner_uid = str(owner.get("kind")), str(owner.get("metadata", {}).get("uid"))
    created_now: list[str] = []
    try:
        for child in children:
            if await _create_child(owner, child, owner_kind, owner_uid):
                created_now.append(f"{child['kind']} {child['metadata']['name']}")
    finally:
        if created_now:  # one event for all of them: an apiserver write per event
            tell(owner, reason="Created", message=", ".join(created_now))


async def _create_child(
    owner: kopf.Body, child: dict[str, Any], owner_kind: str, owner_uid: str
) -> bool:
    """One child of `create_children`; True when this call created it."""
    what = f"{child['kind']} {child['metadata']['name']}"
    child["metadata"].setdefault("annotations", {})[OWNER_KIND] = owner_kind
    try:
        created = await create_if_absent(child)
        found = None if created else await _existing(child)
    except Exception as err:
        kopf.warn(owner, reason="ChildCreateFailed", message=f"{what}: {err}")
        raise kopf.TemporaryError(f"cannot create {what}: {err}", delay=15) from err
    if created:
        metrics.CHILDREN_CREATED.labels(str(child["kind"])).inc()
        return True
    other = foreign_owner(dict(found.raw) if found else {}, owner_kind, owner_uid)
    if other is None:
        if found is not None and child["kind"] == "Deployment":
            await _bring_to(found, child)
        return False
    message = f"{what} already exists and belongs to {other}; rename this experiment"
    kopf.warn(owner, reason="NameConflict", message=message)
    if other.startswith(f"{owner_kind} "):
        # An earlier experiment of this kind and name, still being garbage-collected.
        raise kopf.TemporaryError(message, delay=30)
    current = (owner.get("status") or {}).get("conditions")
    generation = owner.get("metadata", {}).get("generation")
    condition = conditions.upsert(current, "SpecValid", False, "NameConflict", message, generation)
    await patch_status(
        await experiment_of(owner),
        {"phase": "Failed", "message": message, "conditions": condition},
    )
    raise kopf.PermanentError(message)


async def experiment_of(body: kopf.Body) -> APIObject:
    """The experiment a kopf handler was given, as a kr8s object (no GET)."""
    return await bind(EXPERIMENT_KINDS[str(body.get("kind"))], dict(body))


OWNER_KIND = f"{LABEL_PREFIX}owner-kind"  # on every child: which kind of experiment made it


def foreign_owner(existing: dict[str, Any], owner_kind: str, owner_uid: str) -> str | None:
    """Whose an existing child of the wanted name is, when not this experiment's; None when
    it is ours: owned by this very object, or a claim kept (Retain) by an experiment of this
    kind and name before, which a re-applied one picks up on purpose."""
    meta = existing.get("metadata") or {}
    references = meta.get("ownerReferences") or []
    if references:
        if any(reference.get("uid") == owner_uid for reference in references):
            return None
        first = references[0]
        return f"{first.get('kind')} {first.get('name')} (uid {first.get('uid')})"
    kind = (meta.get("annotations") or {}).get(OWNER_KIND)
    return f"a {kind} of the same name" if kind and kind != owner_kind else None


async def _existing(manifest: dict[str, Any]) -> APIObject | None:
    meta = manifest["metadata"]
    return await get_object(manifest["kind"], meta["namespace"], meta["name"])


async def post_warning(experiment: dict[str, Any], reason: str, message: str) -> None:
    """A Warning event about the experiment, from outside a kopf handler (kopf.warn needs
    one's context): a run that fails says why in `kubectl describe`, as a bad spec does."""
    meta = experiment["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = await bind(
        Event,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": experiment["apiVersion"],
                "kind": experiment["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": "Warning",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tempotrain-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        },
    )
    await event.create()


async def scale(namespace: str, names: list[str], replicas: int) -> None:
    """Each Deployment that exists to `replicas` (missing ones are left to the reconcile)."""
    for name in names:
        deployment = await get_object("Deployment", namespace, name)
        if deployment is None:
            continue
        if deployment.raw["spec"].get("replicas", 1) != replicas:
            await deployment.scale(replicas)


async def roll_out(deployments: list[dict[str, Any]]) -> list[str]:
    """Bring existing worker Deployments to what the spec now builds: a pod template whose
    hash changed is replaced (the Deployment's strategy rolls the pods; a training pod saves
    a checkpoint on its way out and the run resumes from it), a changed replica count is
    set, unless the Deployment was scaled to 0 (released). Missing ones are left to the
    reconcile. The names of those changed."""
    changed = []
    for manifest in deployments:
        current = await _existing(manifest)
        if current is not None and await _bring_to(current, manifest):
            changed.append(str(manifest["metadata"]["name"]))
    return changed


async def _bring_to(current: APIObject, manifest: dict[str, Any]) -> bool:
    """One Deployment to its manifest's pod template and replicas; True when it changed."""
    wanted_hash = manifest["metadata"]["annotations"][TEMPLATE_HASH]
    operations: list[dict[str, Any]] = []
    if (current.raw["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != wanted_hash:
        operations += [
            {"op": "replace", "path": "/spec/template", "value": manifest["spec"]["template"]},
            {"op": "add", "path": _annotation_path(TEMPLATE_HASH), "value": wanted_hash},
        ]
    replicas = current.raw["spec"].get("replicas", 1)
    if replicas not in (0, manifest["spec"]["replicas"]):
        operations.append(
            {"op": "replace", "path": "/spec/replicas", "value": manifest["spec"]["replicas"]}
        )
    if operations:
        if not current.raw["metadata"].get("annotations"):
            operations.insert(0, {"op": "add", "path": "/metadata/annotations", "value": {}})
        await current.patch(operations, type="json")
    return bool(operations)


def _annotation_path(key: str) -> str:
    """A JSON Pointer to an annotation (RFC 6901: "/" in a key is written "~1")."""
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


async def get_experiment(
    namespace: str, name: str, kind: str = "BertExperiment"
) -> APIObject | None:
    return await get_object(kind, namespace, name, EXPERIMENT_KINDS)


async def get_object(
    kind: str, namespace: str, name: str, kinds: dict[str, type[APIObject]] = _KINDS
) -> APIObject | None:
    # A GET of the object by name. kr8s's `Kind.get(name)` LISTs with a field selector,
    # which the apiserver answers by filtering every object of the kind in the namespace:
    # with thousands of experiments, each look at one claim cost a scan of all of them.
    cls, api = kinds[kind], await client()
    try:
        async with api.call_api(
            "GET", version=cls.version, url=f"{cls.endpoint}/{name}", namespace=namespace
        ) as response:
            return cls(response.json(), api=api)
    except kr8s.ServerError as err:
        if is_not_found(err):
            return None
        raise


async def delete_if_present(kind: str, namespace: str, name: str) -> bool:
    """Delete (background propagation: the pods go with it); True when this call deleted it."""
    obj = await get_object(kind, namespace, name)
    if obj is None:
        return False
    try:
        await obj.delete(propagation_policy="Background")
    except kr8s.NotFoundError:
        return False
    return True


def is_not_found(err: BaseException | None) -> bool:
    if isinstance(err, kr8s.NotFoundError):
        return True
    response = getattr(err, "response", None)
    return isinstance(err, kr8s.ServerError) and getattr(response, "status_code", 0) == 404


class Conflict(Exception):
    """The object changed since the version a patch was computed from."""


async def patch_status(
    obj: APIObject, status: dict[str, Any], resource_version: str | None = None
) -> bool:
    """Merge-patch `/status`; False when the object is gone (404 is an answer, not an error).
    With `resource_version`, only onto that version of the object, else Conflict: for a
    patch computed from what the object said (a read, then a write)."""
    body: dict[str, Any] = {"status": status}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    url = f"{obj.endpoint}/{obj.name}/status"
    return await merge_patch(obj.version, url, obj.namespace, body, api=obj.api)


async def merge_patch(
    version: str,
    url: str,
    namespace: str | None,
    body: dict[str, Any],
    api: kr8s.asyncio.Api | None = None,
) -> bool:
    """A merge patch (on `api`, else the held client); False when the object is gone,
    Conflict when `body` names a metadata.resourceVersion the object has moved on from. A
    plain PATCH (see create_if_absent): the answer, the whole object, is not read."""
    try:
        async with (api or await client()).call_api(
            "PATCH",
            version=version,
            url=url,
            namespace=namespace,
            content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        ):
            pass
    except kr8s.ServerError as err:
        code = err.response.status_code if err.response is not None else None
        if code == 404:
            return False
        if code == 409:
            raise Conflict(str(err)) from err
        raise
    return True


async def list_experiments(namespaces: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every experiment of every kind, in `namespaces` (empty: all), as plain dicts with
    their kind (a list's items carry none)."""
    api, found = await client(), []
    for kind, cls in EXPERIMENT_KINDS.items():
        for namespace in namespaces or [kr8s.ALL]:
            async for item in api.async_get(cls, namespace=namespace, raw=True):
                found.append(dict(item) | {"kind": kind, "apiVersion": API_VERSION})
    return found


async def patch_experiment(experiment: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Merge-patch an experiment (not its status): `merge_patch`."""
    cls, meta = EXPERIMENT_KINDS[str(experiment["kind"])], experiment["metadata"]
    return await merge_patch(
        cls.version, f"{cls.endpoint}/{meta['name']}", meta["namespace"], patch
    )
