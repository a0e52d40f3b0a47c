"""Run the milter: open the map, the metrics listener and the milter socket, serve.

libmilter handles SIGTERM/SIGINT/SIGHUP itself (its signal thread stops the listener,
lets running sessions finish and removes a unix socket), so a stop is clean and a
restart can bind again at once.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import milter as libmilter
from prometheus_client import start_http_server

from sendpost_agent.config import Config
from sendpost_agent.header import HEADER_NAME
from sendpost_agent.miltersocket import connect, libmilter_address
from sendpost_agent.postconf import PostfixConfig
from sendpost_agent.probe import DamagedKey, load_key
from sendpost_agent.queuemap import MapWriter
from sendpost_agent.trust import Policy, load_policy, unevaluable_warning
from sendpost_milter.groupwriter import GroupWriter
from sendpost_milter.metrics import MilterMetrics
from sendpost_milter.session import Callbacks

log = logging.getLogger("sendpost_milter")
MILTER_NAME = "sendpost-agent"
# Seconds libmilter waits on a silent MTA connection before dropping it.
MTA_IO_TIMEOUT = 600
# Seconds a stop waits for end-of-message callbacks running to put their rows
# (libmilter's stop does not wait for them).
STOP_GRACE = 2.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class MilterStartError(Exception):
    """The milter could not start; the message names the key or path and the fix."""


def prepare_unix_socket_dir(sock: Path) -> None:
    """Make the socket's directory; if we create it, let group postfix in (setgid).

    Postfix's smtpd runs as user postfix and needs write access to the socket. A
    setgid directory owned by group postfix gives every socket created in it that
    group; with umask 007 the socket is 0660, so Postfix can connect and others cannot.
    """
    directory = sock.parent
    if directory.is_dir():
        return
    directory.mkdir(parents=True, mode=0o750)
    try:
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        log.warning("no group 'postfix' on this host; %s keeps its default group", directory)
        return
    os.chown(directory, -1, gid)
    os.chmod(directory, 0o2750)


def _register(callbacks: Callbacks, milter_socket: str) -> None:
    """What ``Milter.runmilter`` does, minus its per-callback Python dispatch.

    Callbacks we leave unset (connect, helo, MAIL FROM, end-of-headers, body, close)
    are answered CONTINUE by pymilter in C. An exception escaping a callback (ours catch
    their own) or raised by pymilter before calling one is answered CONTINUE, not
    pymilter's default TEMPFAIL: at DATA or end-of-message that would defer the message.
    """
    libmilter.set_envrcpt_callback(callbacks.envrcpt)
    libmilter.set_header_callback(callbacks.header)
    libmilter.set_eom_callback(callbacks.eom)
    libmilter.set_abort_callback(callbacks.abort)
    libmilter.set_exception_policy(libmilter.CONTINUE)
    libmilter.set_flags(libmilter.SETSYMLIST)
    libmilter.setconn(libmilter_address(milter_socket))
    libmilter.settimeout(MTA_IO_TIMEOUT)
    libmilter.register(MILTER_NAME, data=callbacks.data, negotiate=callbacks.negotiate)


def _serve(milter_socket: str) -> None:
    """Run libmilter in a worker thread until a stop signal arrives in this one.

    libmilter's own signal thread only sets a flag that its accept loop checks every
    few seconds. The kernel hands a process-directed signal to the main thread first
    when it is waiting for it, so we take it here, stop libmilter and wake its accept
    loop with connections of our own: SIGTERM to exit takes well under a second.
    """
    try:
        libmilter.opensocket(True)  # True: remove a stale unix socket left by a crash
    except libmilter.error as exc:
        raise _cannot_serve(milter_socket, exc) from exc
    _notify_ready()
    failure: list[libmilter.error] = []

    def work() -> None:
        try:
            libmilter.main()
        except libmilter.error as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, name="libmilter")
    worker.start()
    while worker.is_alive():
        info = signal.sigtimedwait(STOP_SIGNALS, 0.5)
        if info is not None:
            log.info("received %s, stopping", signal.Signals(info.si_signo).name)
            # stop() waits for a lock the accept loop holds while it polls: poke the
            # loop until stop() got its turn and the loop has ended.
            threading.Thread(target=libmilter.stop, name="libmilter-stop").start()
            while worker.is_alive():
                _wake(milter_socket)
                worker.join(0.05)
    if failure:
        raise _cannot_serve(milter_socket, failure[0])


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the socket listens: Postfix, ordered after this
    service, starts only then and sees its first messages through the milter."""
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target:
        return
    if target.startswith("@"):  # an abstract socket
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.sendto(b"READY=1", target)
    except OSError as exc:
        log.warning("cannot tell systemd the milter is ready (NOTIFY_SOCKET %s): %s", target, exc)


def _cannot_serve(milter_socket: str, exc: libmilter.error) -> MilterStartError:
    return MilterStartError(
        f"milter-socket {milter_socket}: cannot serve: {exc}; check that the"
        " directory exists and no other process holds the socket"
    )


def _wake(milter_socket: str) -> None:
    with contextlib.suppress(OSError):
        connect(milter_socket, 1.0)


def _claim_unix_socket(milter_socket: str) -> None:
    """Before anything else (the map too): the socket's directory exists, and no other
    milter serves the socket. libmilter would remove a live socket and take it over; the
    running milter would go on unreachable, and our exit would remove the socket."""
    sock = Path(milter_socket.removeprefix("unix:"))
    try:
        prepare_unix_socket_dir(sock)
    except OSError as exc:
        raise MilterStartError(
            f"milter-socket {milter_socket}: cannot create the socket's directory"
            f" {exc.filename or sock.parent}: {exc.strerror or exc}; create it (group postfix,"
            " mode 2750) or choose another milter-socket"
        ) from exc
    with contextlib.suppress(OSError):
        connect(milter_socket, 1.0)
        raise MilterStartError(
            f"milter-socket {milter_socket}: another milter is listening there; stop it"
            " first (systemctl stop sendpost-agent-milter) or choose another milter-socket"
        )


def _trust_policy(config: Config) -> Policy:
    """trusted-clients with Postfix's mynetworks, read once now; every problem is said
    at start, as the header of a client left out is not trusted (never silently)."""
    policy, problem = load_policy(config.trusted_clients, PostfixConfig(config.postfix_config_dir))
    for warning in (problem, unevaluable_warning(policy)):
        if warning:
            log.warning("%s", warning)
    if policy.empty:
        log.warning(
            "trusted-clients trusts no client: no message's %s header is recorded, so no"
            " event is reported; fix: set trusted-clients (default: mynetworks, sasl)",
            HEADER_NAME,
        )
    else:
        log.info("%s header trusted from %s (trusted-clients)", HEADER_NAME, policy.describe())
    return policy


def run(config: Config) -> int:
    os.umask(0o007)
    # No thread but the main one may take a stop signal: block them before any thread
    # starts (threads inherit the mask); _serve waits for them explicitly.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    metrics = MilterMetrics()
    if config.milter_socket.startswith("unix:"):
        _claim_unix_socket(config.milter_socket)
    try:
        writer = MapWriter(config.map_path, config.map_retention)
    except Exception as exc:
        raise MilterStartError(f"state-dir {config.state_dir}: {exc}") from exc
    try:
        address = config.milter_listen
        try:
            # (server, thread) from prometheus-client 0.17 on; Debian 12's 0.16 returns
            # nothing, and its daemon thread then ends with the process.
            http = start_http_server(address.port, address.host, metrics.registry)
        except OSError as exc:
            raise MilterStartError(
                f"milter-listen {address}: cannot listen for /metrics: {exc.strerror};"
                " choose a free port with --milter-listen"
            ) from exc
        try:
            writer.start_maintenance()
            try:
                probe_key = load_key(config.state_dir, create=True)
            except DamagedKey as exc:
                log.warning(
                    "%s: doctor's probes cannot be recognised, so doctor will not"
                    " send one; fix: %s",
                    exc,
                    exc.fix,
                )
                probe_key = None
            policy = _trust_policy(config)
            rows = GroupWriter(writer, metrics)
            callbacks = Callbacks(rows, metrics, probe_key, policy)
            try:
                _register(callbacks, config.milter_socket)
                log.info(
                    "milter listening on %s, metrics on http://%s/metrics, map %s",
                    config.milter_socket,
                    address,
                    config.map_path,
                )
                _serve(config.milter_socket)
                cut = callbacks.wait_ended(STOP_GRACE)
                if cut:  # logged only: /metrics stops with this process
                    log.error(
                        "stopping with %d messages between RCPT TO and end-of-message: the"
                        " MTA handles them per its milter_default_action, and their map rows"
                        " are not written, so they give no events",
                        cut,
                    )
            finally:
                rows.close()  # libmilter has stopped: every answered message's row is queued
        finally:
            if http is not None:
                http[0].shutdown()
                http[0].server_close()
            if config.milter_socket.startswith("unix:"):
                # libmilter leaves the socket behind; a stale one confuses Postfix's logs.
                Path(config.milter_socket.removeprefix("unix:")).unlink(missing_ok=True)
    finally:
        writer.close()
    log.info("milter stopped")
    return 0
