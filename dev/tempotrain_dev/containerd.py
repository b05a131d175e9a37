"""`ctr` against one containerd, in the CRI plugin's namespace (`k8s.io`): the images there
are the ones a kubelet on that containerd can run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tempotrain_dev.images import BuiltImage, ImageBuildError

CRI_NAMESPACE = "k8s.io"


class ContainerdError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ctr:
    socket: Path

    def argv(self) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", CRI_NAMESPACE]

    def __call__(self, *args: str, check: bool = True) -> str:
        result = subprocess.run([*self.argv(), *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def responds(self) -> bool:
        version = subprocess.run([*self.argv(), "--timeout", "2s", "version"], capture_output=True)
        return version.returncode == 0

    def images(self) -> set[str]:
        return set(self("images", "ls", "--quiet").split())

    def load(self, image: BuiltImage) -> bool:
        """Import an image built here, unpacked for the overlayfs snapshotter (ready to run),
        unless it is there already; True when this call imported it. The archive streams
        from buildah's store straight into containerd: no file in between."""
        if image.ref in self.images():
            return False
        exported: Exception | None = None
        with subprocess.Popen(
            [*self.argv(), "images", "import", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as ctr:
            if ctr.stdin is None or ctr.stdout is None:
                raise ContainerdError("ctr import: no pipes")
            try:
                image.export(ctr.stdin)
            except ImageBuildError as err:  # a broken pipe: ctr's output says why
                exported = err
            finally:
                ctr.stdin.close()
            output = ctr.stdout.read().decode(errors="replace").strip()
        if exported or ctr.returncode != 0 or image.ref not in self.images():
            raise ContainerdError(f"importing {image.ref} failed: {output or exported}")
        return True
