"""The few Kubernetes calls the operator makes, through kr8s (async)."""

from __future__ import annotations

from typing import Any

import kr8s
from kr8s.asyncio.objects import APIObject, Deployment, PersistentVolumeClaim, new_class
from tempotrain_workers.api import API_VERSION

BertExperimentResource = new_class(
    f"BertExperiment.{API_VERSION}", namespaced=True, plural="bertexperiments"
)

_KINDS: dict[str, type[APIObject]] = {
    "Deployment": Deployment,
    "PersistentVolumeClaim": PersistentVolumeClaim,
}


async def create_if_absent(manifest: dict[str, Any]) -> bool:
    """Create the object unless one of that name exists; True when this call created it."""
    obj = await _KINDS[manifest["kind"]](manifest)
    try:
        await obj.create()
    except kr8s.ServerError as err:
        if err.response is not None and err.response.status_code == 409:
            return False
        raise
    return True


async def scale_to_zero(namespace: str, names: list[str]) -> None:
    for name in names:
        try:
            deployment = await Deployment.get(name, namespace=namespace)
        except kr8s.NotFoundError:
            continue
        if deployment.raw["spec"].get("replicas", 1) != 0:
            await deployment.scale(0)


async def get_experiment(namespace: str, name: str) -> APIObject | None:
    try:
        return await BertExperimentResource.get(name, namespace=namespace)
    except kr8s.NotFoundError:
        return None


async def patch_status(obj: APIObject, status: dict[str, Any]) -> bool:
    """Merge-patch `/status`; False when the object is gone (404 is an answer, not an error)."""
    try:
        await obj.patch({"status": status}, subresource="status", type="merge")
    except kr8s.NotFoundError:
        return False
    except kr8s.ServerError as err:
        if err.response is not None and err.response.status_code == 404:
            return False
        raise
    return True
