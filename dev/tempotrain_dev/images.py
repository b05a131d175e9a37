"""Container images built on this machine, without Docker and without a registry.

buildah (a Debian package) builds the project's own `operator/Dockerfile` and
`workers/Dockerfile` over a local Python 3.11 base made from Debian packages (debootstrap),
chosen through the Dockerfiles' build args; the same Dockerfiles build with `docker build`
and their public bases. pip inside a build installs only from a wheelhouse downloaded once on
the host (`--no-index`), so a rebuild never downloads torch again and a build needs no
network but Debian's. The real node's sandbox ("pause") image is a static Go program of ours.

Every image is tagged with a content hash of its inputs and kept in buildah's store under
~/.cache/tempotrain/buildah: the same inputs are never built twice, and a failed build tags
nothing, so nothing half-built can be imported into a node (`RealNode.load`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from tempotrain_dev import disk, mounts, wheelhouse
from tempotrain_dev.processes import log_tail
from tempotrain_dev.tools import REPO_ROOT

REPOSITORY = "localhost/tempotrain"
DEBIAN_SUITE = "bookworm"  # Python 3.11, as the project requires
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What python:3.11-slim offers the Dockerfiles: python (not only python3), pip, venv, CAs.
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
# The host's trust store: the registries' TLS may be intercepted by a proxy the host trusts.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ProjectImage = Literal["operator", "workers"]
# What each project Dockerfile copies from the build context (its content hash).
BUILD_INPUTS = (
    "pyproject.toml",
    "README.md",
    "operator/tempotrain_operator",
    "workers/tempotrain_workers",
)


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuiltImage:
    """An image in the local store, by the name pods use for it."""

    ref: str
    store: ImageStore

    def export(self, stream: IO[bytes]) -> None:
        """Write it to ``stream`` as a docker-archive (what `ctr images import` reads)."""
        self.store.push_archive(self.ref, stream)

    def largest_layer(self) -> int:
        """Bytes of its largest layer, uncompressed: the scratch space an import needs
        (containerd writes each layer of an archive in full before it can tell it has it)."""
        manifest = json.loads(
            self.store.buildah("inspect", "--type", "image", "--format", "{{.Manifest}}", self.ref)
        )
        return max((int(layer["size"]) for layer in manifest.get("layers", [])), default=0)


class ImageStore:
    """buildah with a storage of the project's own (not the machine's /var/lib/containers)."""

    def __init__(self, cache: Path | None = None, log: Callable[[str], None] = print) -> None:
        self.cache = cache or wheelhouse.default_cache()
        self.log = log
        self.storage = self.cache / "buildah" / "storage"
        self.logs = self.cache / "buildah" / "logs"
        # buildah's big temporary files (a layer being committed or exported, ~7 GB for the
        # workers) go to TMPDIR, /var/tmp by default, and stay there when buildah is killed
        # (a test timeout, Ctrl-C): three such leftovers once filled CI's disk. Here each
        # process has a folder of its own, and the folders of processes that are gone are
        # removed before the first buildah call of a new one.
        self.scratch = self.cache / "buildah" / "tmp" / str(os.getpid())
        self._scratch_ready = False

    # -- the images ---------------------------------------------------------------------------

    def pause(self, binary: Path) -> BuiltImage:
        ref = f"{REPOSITORY}/pause:{_digest([binary.read_bytes()])}"
        if not self.exists(ref):
            self.log(f"images: building {ref}")
            container = self.buildah("from", "scratch").strip()
            try:
                self.buildah("copy", container, str(binary), "/pause")
                self.buildah("config", "--entrypoint", '["/pause"]', "--user", "65535", container)
                self.buildah("commit", container, ref)
            finally:
                self.buildah("rm", container, check=False)
            self._forget_older(f"{REPOSITORY}/pause", keep=ref)
        return BuiltImage(ref, self)

    def base(self) -> BuiltImage:
        """Python 3.11 from Debian's packages, in place of python:3.11-slim."""
        recipe = [DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES, _BASE_RECIPE_VERSION]
        ref = f"{REPOSITORY}/python:3.11-{DEBIAN_SUITE}-{_digest(recipe)}"
        if self.exists(ref):
            return BuiltImage(ref, self)
        self.log(f"images: building {ref} with debootstrap (about a minute)")
        rootfs = self.cache / "buildah" / f"rootfs.{os.getpid()}"
        try:
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                log=self.logs / "base-debootstrap.log",
            )
            # As in python:3.11-slim: pip may install into the system's Python, no apt lists.
            for leftover in ("usr/lib/python3.11/EXTERNALLY-MANAGED",):
                (rootfs / leftover).unlink(missing_ok=True)
            for cache_dir in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / cache_dir).glob("*"):
                    if entry.is_file():
                        entry.unlink()
            self._commit_rootfs(rootfs, ref)
            self._forget_older(f"{REPOSITORY}/python", keep=ref)
        finally:
            mounts.unmount_below(rootfs)  # debootstrap's /proc and /sys if it was stopped
            shutil.rmtree(rootfs, ignore_errors=True)
        return BuiltImage(ref, self)

    def project(self, name: ProjectImage, context: Path = REPO_ROOT) -> BuiltImage:
        """`<name>/Dockerfile` over the local base, pip fed from the wheelhouse; ``context``:
        a checkout of the project (this one by default)."""
        base = self.base()
        wheels = self.wheelhouse()
        dockerfile = context / name / "Dockerfile"
        key = project_key(context, dockerfile, base.ref, wheels.name)
        ref = f"{REPOSITORY}/{name}:{key}"
        if self.exists(ref):
            return BuiltImage(ref, self)
        self.log(f"images: building {ref} from {dockerfile.relative_to(context)}")
        self._make_room(name, keep=ref)
        pip_conf = wheels / "pip.conf"
        log = self.logs / f"{name}.log"
        _run(
            [
                *self._buildah_argv(),
                "bud",
                "--layers",  # the dependencies' layer is reused while pyproject.toml stays
                "--force-rm",  # a failed step leaves no working container (nor its mount)
                "--pull=never",
                "--network=host",  # apt inside the build reaches Debian's mirror
                f"--build-arg=PYTHON_IMAGE={base.ref}",
                f"--build-arg=BASE_IMAGE={base.ref}",
                f"--volume={wheels}:/wheelhouse:ro",
                f"--volume={pip_conf}:/etc/pip.conf:ro",
                f"--volume={HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro",
                f"--file={dockerfile}",
                f"--tag={ref}",
                str(context),
            ],
            log=log,
            env=self._env(),
        )
        self._forget_older(f"{REPOSITORY}/{name}", keep=ref)
        return BuiltImage(ref, self)

    def wheelhouse(self) -> Path:
        return wheelhouse.ensure(self.cache, self.log)

    # -- buildah ----------------------------------------------------------------------------

    def exists(self, ref: str) -> bool:
        found = self.buildah("images", "--quiet", "--noheading", ref, check=False)
        return bool(found.strip())

    def push_archive(self, ref: str, stream: IO[bytes]) -> None:
        result = subprocess.run(
            [*self._buildah_argv(), "push", "--quiet", ref, f"docker-archive:/dev/stdout:{ref}"],
            stdout=stream,
            stderr=subprocess.PIPE,
            env=self._env(),
        )
        if result.returncode != 0:
            raise ImageBuildError(f"exporting {ref}: {result.stderr.decode().strip()}")

    def _commit_rootfs(self, rootfs: Path, ref: str) -> None:
        container = self.buildah("from", "scratch").strip()
        try:
            target = self.buildah("mount", container).strip()
            # tar keeps owners, modes, links and device nodes exactly as debootstrap made them.
            _run(
                ["sh", "-c", f'tar -C "{rootfs}" -cf - . | tar -C "{target}" -xpf -'],
                log=self.logs / "base-import.log",
                env=self._env(),
            )
            self.buildah("umount", container)
            self.buildah(
                "config",
                "--env=LANG=C.UTF-8",
                "--env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd=python3",
                container,
            )
            self.buildah("commit", container, ref)
        finally:
            self.buildah("rm", container, check=False)

    def _make_room(self, name: ProjectImage, keep: str) -> None:
        """A build whose dependencies changed writes the workers' ~7 GB layer twice (the
        working container, then the committed layer) while the older image still holds its
        own: on a disk short of that, the older image goes first (its layers could only have
        saved a rebuild that is, then, not possible anyway), and a disk still short says so."""
        room, minimum = BUILD_ROOM[name]
        repository = f"{REPOSITORY}/{name}"
        free = shutil.disk_usage(self.storage if self.storage.exists() else self.cache).free
        if free < room:
            self.log(
                f"images: {free / disk.GB:.0f} GB free, under {room / disk.GB:.0f}: "
                f"the older {repository} images are removed before the build"
            )
            self._forget_older(repository, keep)
        disk.require_free(self.storage, minimum, f"building {keep}")

    def _forget_older(self, repository: str, keep: str) -> None:
        """Older builds of the same image: their tags go, layers still used stay."""
        listed = self.buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False)
        for ref in listed.split():
            if ref.rsplit(":", 1)[0] == repository and ref != keep:
                self.buildah("rmi", ref, check=False)
        self.buildah("rmi", "--prune", check=False)

    def _buildah_argv(self) -> list[str]:
        return [
            "buildah",
            f"--root={self.storage}",
            f"--runroot={self.cache / 'buildah' / 'run'}",
            "--storage-driver=overlay",
        ]

    def _env(self) -> dict[str, str]:
        if not self._scratch_ready:
            remove_orphaned_scratch(self.scratch.parent)
            self.scratch.mkdir(parents=True, exist_ok=True)
            self._scratch_ready = True
        return {**os.environ, "TMPDIR": str(self.scratch)}

    def buildah(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [*self._buildah_argv(), *args], capture_output=True, text=True, env=self._env()
        )
        if check and result.returncode != 0:
            raise ImageBuildError(f"buildah {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout


# Bump when the base recipe changes in a way its inputs above do not show.
_BASE_RECIPE_VERSION = "1"


# Free disk under which a project build first drops the older image of its name, and under
# which it does not start (the workers' dependency layer is ~7 GB, written twice).
BUILD_ROOM: dict[str, tuple[int, int]] = {
    "workers": (20 * disk.GB, 15 * disk.GB),
    "operator": (3 * disk.GB, 2 * disk.GB),
}


def project_key(context: Path, dockerfile: Path, base_ref: str, wheelhouse_key: str) -> str:
    """Content hash of everything a project image is made of."""
    parts: list[bytes] = [dockerfile.read_bytes(), base_ref.encode(), wheelhouse_key.encode()]
    for path in _input_files(context, BUILD_INPUTS):
        parts += [str(path.relative_to(context)).encode(), path.read_bytes()]
    return _digest(parts)


def _input_files(root: Path, inputs: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = root / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            p
            for p in candidates
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        ]
    return files


def _digest(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:12]


def remove_orphaned_scratch(parent: Path) -> None:
    """Remove the per-process scratch folders under ``parent`` whose process has ended (a
    folder's name is its owner's pid); everything else there is a leftover too."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.isdigit() and _process_alive(int(entry.name)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run a build step with its output in ``log``; on failure, raise with the step's own
    last lines (the error a user needs), not a summary of ours."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        step = " ".join([Path(argv[0]).name, *[a for a in argv[1:] if not a.startswith("-")][:1]])
        raise ImageBuildError(
            f"{step} failed (exit {result.returncode}); the last lines of {log}:\n"
            f"{log_tail(log, 30)}"
        )
