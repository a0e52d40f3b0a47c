"""A whole Debian 12 host for end-to-end tests: an mmdebstrap root filesystem booted with
systemd-nspawn, so the package, its units and Postfix run exactly as on a real server.

Why a booted container: what the unit tests cannot show is what systemd, dpkg/apt and
Debian's own Postfix (chrooted smtpd, syslog to /var/log/mail.log) do with the package.

- ``RootfsBuild`` runs mmdebstrap in the background (1 to 2 minutes here, most of it dpkg
  unpacking and configuring); a test module boots the result once and changes it as it
  goes (a root filesystem is not worth copying).
- ``Container`` boots it with ``systemd-nspawn -b --keep-unit --register=no`` (this host's
  PID 1 is not systemd, so no machined and no scope unit) and ``--private-network``: the
  container has its own loopback only, so its Postfix can listen on port 25 and the agent
  on its default port 9113 without meeting anything of the host's, and nothing in it can
  reach the outside. Commands run inside through ``nsenter`` into the container's
  namespaces. The test's own servers (the ingest stand-in, an SMTP sink) listen *inside*
  the container's network namespace while running in the test process: ``in_netns`` runs
  their start() in a thread that has joined that namespace, and a socket stays in the
  namespace it was made in.
- Teardown is reliable: ``shutdown`` powers the container off (SIGTERM to nspawn), kills
  its PID namespace if that hangs, and then checks that no process of it and no mount
  under its root is left. An atexit hook does the same for a test that never got there.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

#: Debian release of the host under test (the product's target, Debian 12).
SUITE = "bookworm"
#: What a minimal mail server runs: systemd as PID 1, Debian's Postfix, and rsyslog so that
#: Postfix logs to /var/log/mail.log as on a default Debian 12 install; and python3, which
#: debian/control leaves to a substitution variable.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "postfix", "rsyslog", "python3")
#: Host tools this module runs; missing ones fail the test (never a skip).
REQUIRED_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "setpriv", "dpkg-deb")
#: Inside the container: a clean environment, not the test runner's.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
_CLONE_NEWNET = 0x40000000
_SBIN = ("/usr/sbin", "/sbin")


class HostError(RuntimeError):
    """The container could not be built, booted, used or torn down; says why."""


def missing_tools() -> list[str]:
    """The REQUIRED_TOOLS not found in PATH or sbin."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool, path=path) is None]


def package_names(depends: str) -> list[str]:
    """Package names of a Depends field: the first of each set of alternatives, without
    version or architecture, substitution variables left out
    (``python3 (>= 3.11), adduser | passwd, ${misc:Depends}`` -> python3, adduser)."""
    names = []
    for item in depends.split(","):
        first = item.split("|")[0].strip()
        name = re.split(r"[\s(:]", first, maxsplit=1)[0]
        if name and not name.startswith("$"):
            names.append(name)
    return names


def control_depends(control: Path) -> str:
    """The Depends field of the (one) binary package in a debian/control file."""
    binary = control.read_text().split("\nPackage:", 1)[-1]
    match = re.search(r"(?m)^Depends:(.*(?:\n[ \t].*)*)", binary)
    if match is None:
        raise HostError(f"{control}: the binary package has no Depends field")
    return " ".join(match.group(1).split())


def deb_field(deb: Path, field: str) -> str:
    """One control field of a .deb (``dpkg-deb -f``); "" when it has none."""
    return _run(["dpkg-deb", "-f", str(deb), field], timeout=60).stdout.strip()


def rebuild_with_version(deb: Path, version: str, out: Path) -> Path:
    """The same package with another Version: a newer build of the same tree, made in
    seconds (file owners, modes and maintainer scripts are kept as they are)."""
    work = out.parent / f"{out.name}.d"
    shutil.rmtree(work, ignore_errors=True)
    _run(["dpkg-deb", "-R", str(deb), str(work)], timeout=120)
    control = work / "DEBIAN" / "control"
    text, count = re.subn(r"(?m)^Version: .*$", f"Version: {version}", control.read_text())
    if count != 1:
        raise HostError(f"{deb}: no Version line in DEBIAN/control")
    control.write_text(text)
    _run(["dpkg-deb", "--build", str(work), str(out)], timeout=300)
    shutil.rmtree(work)
    return out


class RootfsBuild:
    """mmdebstrap building a bookworm root filesystem with BASE_PACKAGES and ``packages``
    into ``dest`` (must not exist yet), in the background, so that the package can be
    built meanwhile. Its output goes to ``log``.

    No recommends, no documentation or translations (faster, and nothing a test reads).
    Postfix is configured by its package as an "Internet Site", as a plain
    ``apt install postfix`` on a fresh Debian 12 does.
    """

    def __init__(self, dest: Path, packages: Iterable[str], log: Path) -> None:
        self.dest = dest
        self.log = log
        wanted = sorted({*BASE_PACKAGES, *packages})
        command = [
            "mmdebstrap",
            "--variant=apt",
            "--mode=root",
            f"--include={','.join(wanted)}",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            # A known hostname: Postfix's package takes it for myhostname.
            '--essential-hook=echo mailhost > "$1/etc/hostname"',
            SUITE,
            str(dest),
        ]
        self.started = time.monotonic()
        self.seconds: float | None = None  # from the start until wait() saw it done
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                ["setpriv", "--pdeathsig=TERM", *command],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float = 900.0) -> Path:
        """The finished root filesystem; raises HostError with the log when it failed."""
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            code = None
        if code != 0:
            raise HostError(
                f"mmdebstrap failed (rc={code}, None: timed out after {timeout}s);"
                f" {self.log} ends:\n{_tail(self.log)}"
            )
        if self.seconds is None:
            self.seconds = time.monotonic() - self.started
        return self.dest

    def cancel(self) -> None:
        """Stop a build still running (mmdebstrap cleans up after itself on SIGTERM)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def package_rootfs(control: Path) -> RootfsBuild:
    """A RootfsBuild, started now in a new directory under $TMPDIR, with BASE_PACKAGES
    and the Depends of the binary package in ``control`` (debian/control)."""
    base = Path(tempfile.mkdtemp(prefix="sendpost-host-"))
    depends = package_names(control_depends(control))
    return RootfsBuild(base / "rootfs", depends, base / "build.log")


def remove_rootfs(build: RootfsBuild) -> None:
    """Stop the build if it runs and delete its directory (300 MB once built)."""
    build.cancel()
    # --one-file-system: should a mount be left under it, never delete through it.
    subprocess.run(["rm", "-rf", "--one-file-system", str(build.dest.parent)], check=False)


class Container:
    """A booted systemd-nspawn container of the root filesystem ``root``.

    ``root`` is the container's / itself: files written under it are seen inside (except
    under /tmp and /run, which are the container's own tmpfs). nspawn's own output (the
    console: systemd's boot messages) goes to ``log``.
    """

    def __init__(self, root: Path, log: Path, name: str | None = None) -> None:
        self.root = root
        self.log = log
        self.name = name or f"sendpost-host-{os.getpid()}"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._pidns: str | None = None

    # -- lifecycle -------------------------------------------------------------------

    def boot(self, timeout: float = 120.0) -> Container:
        """Boot and return once systemd says the system is running (all units up)."""
        if self._nspawn is not None:
            raise HostError(f"{self.name} is already booted")
        command = [
            # Should the test process die without shutting the container down (SIGKILL, a
            # CI timeout), nspawn gets SIGTERM and powers the container off.
            "setpriv",
            "--pdeathsig=TERM",
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.root}",
            f"--machine={self.name}",
            "--boot",
            "--keep-unit",
            "--register=no",
            "--private-network",
            # A console that getty can use, and its output (systemd's boot messages) in log.
            "--console=read-only",
        ]
        with self.log.open("ab") as out:
            self._nspawn = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        _RUNNING.add(self)
        deadline = time.monotonic() + timeout
        try:
            self._leader = self._find_leader(deadline)
            self._pidns = os.readlink(f"/proc/{self._leader}/ns/pid")
            self._wait_running(deadline)
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self, timeout: float = 60.0) -> None:
        """Power off (what `poweroff` inside does), kill what is left if that hangs, and
        check that no process of the container and no mount under its root survived."""
        nspawn, self._nspawn = self._nspawn, None
        _RUNNING.discard(self)
        if nspawn is None:
            return
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                # The kernel kills every process of a PID namespace when its init dies.
                if self._leader is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._leader, signal.SIGKILL)
                nspawn.kill()
                nspawn.wait()
        survivors = self._survivors()
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        mounts = self.mounts()
        # nspawn leaves its (empty) mount propagation directory behind on a host without
        # systemd; nothing else uses it.
        with contextlib.suppress(OSError):
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}")
        if survivors or mounts:
            raise HostError(
                f"{self.name} left processes {survivors} (killed) and mounts {mounts} behind"
            )

    def __enter__(self) -> Container:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    @property
    def leader(self) -> int:
        """Host PID of the container's PID 1 (its systemd)."""
        if self._leader is None or not self.running:
            raise HostError(f"{self.name} is not running")
        return self._leader

    def mounts(self) -> list[str]:
        """Mount points on the host at or under the root filesystem (none while it is not
        booted: nspawn mounts in its own mount namespace)."""
        root = str(self.root.resolve())
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
        return found

    # -- inside ----------------------------------------------------------------------

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as root inside the container (all its namespaces, its root, a
        clean environment); raise HostError with its output when ``check`` and it fails."""
        env = [f"{key}={value}" for key, value in CONTAINER_ENV.items()]
        command = ["nsenter", f"--target={self.leader}", "--all", "env", "-i", *env, *args]
        proc = subprocess.run(
            command,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise HostError(
                f"in {self.name}: {' '.join(args)} failed (rc={proc.returncode})\n"
                f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
            )
        return proc

    def sh(self, script: str, timeout: float = 120.0) -> str:
        """Run a shell script inside; return its stdout (raises when it fails)."""
        return self.run("sh", "-euc", script, timeout=timeout).stdout

    def path(self, inside: str) -> Path:
        """The host path of an absolute path inside the container (not /tmp or /run)."""
        if not inside.startswith("/") or inside.startswith(("/tmp/", "/run/")):
            raise ValueError(f"{inside!r}: give an absolute path outside /tmp and /run")
        return self.root / inside.lstrip("/")

    def in_netns(self, function: Callable[[], _T]) -> _T:
        """Call ``function`` in a thread that joined the container's network namespace:
        the sockets it makes (a server's listener, a client's connection) live there, and
        so do threads it starts. Returns its result or raises its exception."""
        outcome: list[_T] = []
        failure: list[BaseException] = []
        libc = ctypes.CDLL(None, use_errno=True)
        namespace = f"/proc/{self.leader}/ns/net"

        def target() -> None:
            try:
                fd = os.open(namespace, os.O_RDONLY)
                try:
                    # Per thread: only this thread (and threads it starts) moves.
                    if libc.setns(fd, _CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
                finally:
                    os.close(fd)
                outcome.append(function())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=target, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return outcome[0]

    def journal(self, *units: str, lines: int = 80) -> str:
        """The last journal lines of ``units`` (all units when none), for failure messages."""
        selectors = [f"--unit={unit}" for unit in units]
        proc = self.run(
            "journalctl", "--no-pager", "-n", str(lines), *selectors, check=False, timeout=60
        )
        return proc.stdout + proc.stderr

    # -- helpers ---------------------------------------------------------------------

    def _find_leader(self, deadline: float) -> int:
        """nspawn's child in a PID namespace of its own: the container's PID 1 (setpriv
        execs nspawn, so nspawn is the process started)."""
        assert self._nspawn is not None
        ours = os.readlink("/proc/self/ns/pid")
        children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise HostError(
                    f"systemd-nspawn exited with {self._nspawn.returncode}; "
                    f"{self.log} ends:\n{_tail(self.log)}"
                )
            with contextlib.suppress(OSError, ValueError):
                for child in map(int, children.read_text().split()):
                    if os.readlink(f"/proc/{child}/ns/pid") != ours:
                        return child
            time.sleep(0.05)
        raise HostError(f"{self.name}: no container init within the timeout\n{_tail(self.log)}")

    def _wait_running(self, deadline: float) -> None:
        """`systemctl is-system-running --wait`, retried until systemd answers at all."""
        state = ""
        while time.monotonic() < deadline:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                proc = self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
                )
            except subprocess.TimeoutExpired:
                break
            state = proc.stdout.strip()
            if state == "running":
                return
            if state in ("degraded", "maintenance", "stopping"):
                failed = self.run("systemctl", "--failed", "--no-pager", check=False).stdout
                raise HostError(f"{self.name} booted {state}:\n{failed}\n{self.journal(lines=60)}")
            time.sleep(0.2)  # not up far enough to answer yet
        raise HostError(
            f"{self.name}: systemd not running within the timeout (last state {state!r})\n"
            f"{_tail(self.log)}"
        )

    def _survivors(self) -> list[int]:
        """Host PIDs of processes still in the container's PID namespace."""
        if self._pidns is None:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == self._pidns:
                        found.append(int(entry))
        return found

    def __repr__(self) -> str:
        return f"Container(name={self.name!r}, root={self.root})"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise HostError(
            f"{' '.join(args)} failed (rc={proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


#: Containers booted and not yet shut down; shut down at interpreter exit as a safety net.
_RUNNING: set[Container] = set()


@atexit.register
def _shutdown_all() -> None:
    for container in list(_RUNNING):
        with contextlib.suppress(Exception):
            container.shutdown()
