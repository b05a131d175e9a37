"""A minimal volume provisioner for the local platform: every pending PVC gets a hostPath PV
pre-bound to it, and kube-controller-manager's binder completes the binding.

Without it PVCs stay Pending and pods that mount them are never scheduled (there is no
storage driver here). `python -m tempotrain_dev.provisioner --kubeconfig K --root DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kr8s
import kr8s.asyncio
from kr8s.asyncio.objects import APIObject, PersistentVolume

from tempotrain_dev.waiting import wait_for

log = logging.getLogger("tempotrain_dev.provisioner")
PROVISIONED_BY = "tempotrain.dev/local-provisioner"
# The platform's default StorageClass, this provisioner's. Claims of another class are left
# alone, as a real provisioner leaves them: the PV controller then says on the claim that
# the class does not exist, and the operator says it on the experiment.
STORAGE_CLASS = "tempotrain-local"


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONED_BY,
        "reclaimPolicy": "Delete",
        # hostPath volumes on one machine: any pod can mount them, in any access mode.
        "volumeBindingMode": "Immediate",
    }


def is_ours(claim: dict[str, Any]) -> bool:
    """A claim of our class, or of none (made before the class existed, or asking for no
    class: static binding, which this platform's volumes stand in for)."""
    return claim["spec"].get("storageClassName") in (None, "", STORAGE_CLASS)


def build_pv(claim: dict[str, Any], root: Path) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    name = f"pv-{meta['namespace']}-{meta['name']}"[:253]
    pv_spec: dict[str, Any] = {
        "capacity": {"storage": spec["resources"]["requests"]["storage"]},
        "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
        "persistentVolumeReclaimPolicy": "Delete",
        "hostPath": {"path": str(root / name), "type": "DirectoryOrCreate"},
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        },
        "storageClassName": spec.get("storageClassName") or "",
    }
    if spec.get("volumeMode"):
        pv_spec["volumeMode"] = spec["volumeMode"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONED_BY},
        },
        "spec": pv_spec,
    }


def claim_directory(
    kubectl: Callable[..., str], namespace: str, claim: str, timeout: float = 60
) -> Path:
    """Where a claim's files are on this machine, once it is bound: its PV's hostPath (as this
    provisioner makes them). For putting data on a volume and reading results off it."""

    def volume() -> str | None:
        found = kubectl("get", "pvc", claim, "-n", namespace, "--ignore-not-found", "-o", "json")
        pvc = json.loads(found) if found.strip() else {}
        bound = (pvc.get("status") or {}).get("phase") == "Bound"
        return str(pvc["spec"]["volumeName"]) if bound else None

    name = wait_for(volume, timeout=timeout, what=f"claim {namespace}/{claim} to be bound")
    pv = json.loads(kubectl("get", "pv", name, "-o", "json"))
    return Path(pv["spec"]["hostPath"]["path"])


async def provision(claim: APIObject, root: Path) -> None:
    raw: dict[str, Any] = dict(claim.raw)
    if raw["spec"].get("volumeName") or (raw.get("status") or {}).get("phase") == "Bound":
        return
    if not is_ours(raw):
        return
    manifest = build_pv(raw, root)
    directory = root / manifest["metadata"]["name"]
    directory.mkdir(parents=True, exist_ok=True)
    # World-writable, as local-path-provisioner makes them: pods run as any uid (ours as
    # 1000), and fsGroup does not apply to hostPath volumes.
    directory.chmod(0o777)
    try:
        await (await PersistentVolume(manifest)).create()
        log.info(
            "provisioned %s for %s/%s", manifest["metadata"]["name"], claim.namespace, claim.name
        )
    except kr8s.ServerError as err:
        if err.response is None or err.response.status_code != 409:
            raise


async def run(root: Path) -> None:
    api = await kr8s.asyncio.api()
    while True:  # a watch ends on server timeouts: resume it
        async for claim in api.get("persistentvolumeclaims", namespace=kr8s.ALL):
            if isinstance(claim, APIObject):
                await provision(claim, root)
        async for event, claim in api.watch("persistentvolumeclaims", namespace=kr8s.ALL):
            if event in ("ADDED", "MODIFIED"):
                await provision(claim, root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="where volume dirs are made")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
