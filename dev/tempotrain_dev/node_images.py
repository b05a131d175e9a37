"""The real node's image store, seeded from a cache by hard links.

The workers image is about 7 GB: importing it into a fresh node's containerd takes minutes
and as much disk again, and every test session starts a fresh node. So the images are
imported once into a seed store under ~/.cache/tempotrain/node-images (a containerd root of
its own, filled by a short-lived containerd), and a node starting up gets a copy of that root
in which every file is a hard link: seconds, and no disk. Image content and unpacked layers
are never written to in place (containers write to snapshots of their own), so sharing their
files is safe; the two metadata databases, which are written, are real copies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tempotrain_dev import disk
from tempotrain_dev.containerd import Ctr
from tempotrain_dev.images import BuiltImage
from tempotrain_dev.processes import ManagedProcess
from tempotrain_dev.waiting import wait_for

# Written by containerd in place: never shared between stores.
DATABASES = (
    Path("io.containerd.metadata.v1.bolt/meta.db"),
    Path("io.containerd.snapshotter.v1.overlayfs/metadata.db"),
)


class NodeImageSeed:
    def __init__(self, cache: Path, log: Callable[[str], None] = print) -> None:
        self.directory = cache / "node-images"
        self.root = self.directory / "root"
        self.log = log
        self._record = self.directory / "images.json"

    def images(self) -> list[str]:
        return list(json.loads(self._record.read_text())) if self._record.exists() else []

    def ensure(self, images: list[BuiltImage]) -> None:
        """Make the seed hold these images (imported once); older builds of the same images
        are removed, other images kept."""
        wanted = {image.ref for image in images}
        if wanted <= set(self.images()) and not self._older(set(self.images()), wanted):
            return
        with self._locked(exclusive=True), self._containerd() as ctr:
            have = ctr.images()
            stale = self._older(have, wanted)
            for image in images:
                if image.ref in have:
                    continue
                needed = image.largest_layer() + disk.GB
                if stale and shutil.disk_usage(self.root).free < needed:
                    # Short of disk: the older builds go first, not after. Otherwise they
                    # stay until the new one is in, because a new build of the workers
                    # shares its ~7 GB dependency layer with the old one, which containerd
                    # then does not write again.
                    self._remove(ctr, stale)
                    have -= set(stale)
                    stale = []
                disk.require_free(self.root, needed, f"importing {image.ref}")
                self.log(f"node images: importing {image.ref} into the seed store")
                ctr.load(image)
            if stale:
                self._remove(ctr, stale)
            self._record.write_text(json.dumps(sorted((have | wanted) - set(stale))))

    def _remove(self, ctr: Ctr, stale: list[str]) -> None:
        # --sync: the garbage collector has removed what only they used on return.
        ctr("images", "rm", "--sync", *stale)
        self._record.write_text(json.dumps(sorted(set(self.images()) - set(stale))))

    @staticmethod
    def _older(have: set[str], wanted: set[str]) -> list[str]:
        """Images in ``have`` that are other tags of the repositories ``wanted`` names."""
        repositories = {ref.rsplit(":", 1)[0] for ref in wanted}
        return sorted(r for r in have - wanted if r.rsplit(":", 1)[0] in repositories)

    def copy_to(self, containerd_root: Path) -> list[str]:
        """Replace ``containerd_root`` with a hard-linked copy of the seed; the images it
        holds. A node's store holds nothing else worth keeping: its containers are removed
        when it stops."""
        shutil.rmtree(containerd_root, ignore_errors=True)
        containerd_root.parent.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            return []
        with self._locked(exclusive=False):
            linked = subprocess.run(
                ["cp", "-a", "--link", str(self.root), str(containerd_root)],
                capture_output=True,
                text=True,
            )
            if linked.returncode != 0:  # another filesystem: a real copy, slower but right
                shutil.rmtree(containerd_root, ignore_errors=True)
                self.log("node images: the seed is on another filesystem; copying it")
                shutil.copytree(self.root, containerd_root, symlinks=True)
            for database in DATABASES:
                if (self.root / database).exists():
                    (containerd_root / database).unlink(missing_ok=True)
                    shutil.copy2(self.root / database, containerd_root / database)
            return self.images()

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    @contextlib.contextmanager
    def _containerd(self) -> Iterator[Ctr]:
        """A containerd on the seed root for the time of an update (no CRI, no network)."""
        socket = self.directory / "containerd.sock"
        config = self.directory / "config.toml"
        config.write_text(
            f'version = 2\nroot = "{self.root}"\nstate = "{self.directory / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri", '
            '"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
            '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]\n'
            f'[grpc]\n  address = "{socket}"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.directory / "opt"}"\n'
        )
        process = ManagedProcess("containerd", self.directory)
        ctr = Ctr(socket)
        process.start(["containerd", "--config", str(config)])
        try:
            wait_for(
                ctr.responds,
                timeout=30,
                what="the seed store's containerd",
                detail=lambda: str(process.exited_early()),
            )
            yield ctr
        finally:
            process.stop()
