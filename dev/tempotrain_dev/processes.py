"""Background processes with one PID file each, stopped by their own PID.

Every process started here carries ``TEMPOTRAIN_PLATFORM=<state dir>`` in its environment.
Children inherit it, so `leftovers()` can find anything a platform left behind, even a
grandchild whose PID was never recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tempotrain_dev.waiting import WaitTimeout, wait_for

PLATFORM_ENV_MARKER = "TEMPOTRAIN_PLATFORM"


@dataclass(frozen=True)
class ManagedProcess:
    """A named process of a platform: ``<state>/run/<name>.pid`` and ``<state>/logs/<name>.log``."""

    name: str
    state_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded PID if that process is still ours and alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _is_ours(pid, self.state_dir) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start argv detached (own session) unless already running; returns the PID."""
        existing = self.pid()
        if existing is not None:
            return existing
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {}), PLATFORM_ENV_MARKER: str(self.state_dir)}
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                # Own session: Ctrl-C in the terminal that ran `up` must not kill the platform.
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        # Until the child has exec'd, /proc shows the parent's environment, without the marker.
        wait_for(
            lambda: _is_ours(proc.pid, self.state_dir) or proc.poll() is not None,
            timeout=10,
            what=f"{self.name} to start",
            interval=0.01,
        )
        return proc.pid

    def exited_early(self) -> str | None:
        """If the process died, the tail of its log (for an error message), else None."""
        if self.is_running():
            return None
        return log_tail(self.log_file)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM its process group, wait, then SIGKILL; remove the PID file."""
        pid = self.pid()
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            # The whole group, not only its leader: a child that was slower to act on the
            # signal would otherwise outlive stop() (seen as a leftover right after it).
            if not _wait_gone(pid, timeout) or not _wait_group_gone(pid, timeout):
                _signal_group(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
                _wait_group_gone(pid, 5.0)
        self.pid_file.unlink(missing_ok=True)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def leftovers(state_dir: Path | None) -> list[int]:
    """PIDs of live processes started under state_dir, and of everything below them (a
    container's processes below its shim carry no marker); with None, by any platform."""
    wanted = f"{PLATFORM_ENV_MARKER}={state_dir or ''}".encode()
    # Components mark themselves with their own sub-directory of the platform's state dir.
    prefix = wanted if state_dir is None else wanted + b"/"

    own = os.getpid()
    marked = [
        pid
        for pid, environ in _each_process("environ")
        if pid != own and any(e == wanted or e.startswith(prefix) for e in environ.split(b"\0"))
    ]
    below = [pid for pid in descendants(marked) if pid != own and not _is_zombie(pid)]
    return sorted({*marked, *below})


def pids_running(*fragments: str) -> list[int]:
    """Live processes whose command line contains every fragment (zombies excluded)."""
    wanted = [f.encode() for f in fragments]
    return sorted(
        pid
        for pid, cmdline in _each_process("cmdline")
        if all(w in cmdline for w in wanted) and not _is_zombie(pid)
    )


def descendants(roots: list[int]) -> list[int]:
    """Every live process below ``roots`` (children, their children, ...), deepest last."""
    children: dict[int, list[int]] = {}
    for pid, stat in _each_process("stat"):
        # The parent PID follows the state letter after the parenthesised command name.
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    frontier = list(roots)
    while frontier:
        below = [child for pid in frontier for child in children.get(pid, [])]
        found += below
        frontier = below
    return found


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL every process carrying our marker, and what runs below them, and wait
    (bounded) until they are gone, so a check right after does not see one still dying."""
    pids = leftovers(state_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        with contextlib.suppress(WaitTimeout):
            wait_for(
                lambda: all(_is_zombie(pid) for pid in pids),
                timeout=10,
                what="killed leftovers to exit",
            )
    return pids


def _each_process(file: str) -> Iterator[tuple[int, bytes]]:
    """(PID, the contents of /proc/<PID>/<file>) of every process still there to be read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / file).read_bytes()
            except OSError:  # gone meanwhile, or not ours to read
                continue


def _is_ours(pid: int, state_dir: Path) -> bool:
    # A recycled PID belongs to someone else: only trust it if it carries our marker.
    marker = f"{PLATFORM_ENV_MARKER}={state_dir}".encode()
    environ = _environ(pid)
    # While a process execs (nsenter becoming kubelet or kube-proxy) its environment reads
    # back empty for a moment: that is not "gone". Ask again briefly before saying so.
    for _ in range(50):
        if environ != [b""] or _is_zombie(pid):
            break
        time.sleep(0.01)
        environ = _environ(pid)
    return marker in environ and not _is_zombie(pid)


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat[stat.rindex(")") + 2] in "ZX"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for pid, stat in _each_process("stat"):
        # After the parenthesised command name: state, parent PID, process group.
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(pid)
    return members


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap it if it is our own child (started by this very Python process).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.1)
    return False
