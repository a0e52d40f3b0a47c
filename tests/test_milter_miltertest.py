"""The milter driven by Debian's `miltertest` (a real libmilter client), no Postfix.

Each test speaks the milter protocol to the real `sendpost-agent milter` process, then
checks the reply (always ACCEPT), the map row and the counters an operator would see.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from sendpost_agent.miltersocket import connect, libmilter_address
from sendpost_agent.probe import load_key, make_token
from sendpost_agent.queuemap import HeaderState, MapReader
from tests.support.milter import MilterProcess
from tests.support.postfix import free_port

pytestmark = pytest.mark.integration

# A client in mynetworks (the milter's test configuration), as Postfix names it.
IN_MYNETWORKS = {"{client_addr}": "127.0.0.1"}
OUTSIDER = {"{client_addr}": "203.0.113.9"}  # neither in mynetworks nor authenticated
CANON = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
OTHER = "9b2d6c1e-0a57-4c3e-8f1a-6f6b0d7c2e11"


def lua_quote(text: str) -> str:
    return "[==[" + text + "]==]"


def lua_message(
    queue_id: str | None,
    headers: list[tuple[str, str]],
    abort: bool = False,
    reply: str = "SMFIR_ACCEPT",
    recipients: tuple[str, ...] = ('"<rcpt@example.com>"',),
    client: Mapping[str, str] = IN_MYNETWORKS,
) -> str:
    """One message on an open connection `conn`, as Postfix sends it to this milter.

    Only the steps the milter negotiates are sent (miltertest refuses the others): RCPT
    TO (each a Lua argument list: address, then ESMTP arguments; libmilter refuses DATA
    without one), DATA, the headers (no reply) and end-of-message, with the queue ID and
    the ``client`` macros ({client_addr}, {auth_authen}) at end-of-message, as Postfix
    sends the macro list the milter asks for. Asserts the milter's final answer.
    """
    lines = [f"check(mt.rcptto(conn, {rcpt}), 'rcptto')" for rcpt in recipients]
    lines += [
        "check(mt.data(conn), 'data')",
        "if mt.getreply(conn) ~= SMFIR_CONTINUE then error('DATA not continued') end",
    ]
    lines += [
        f"check(mt.header(conn, {lua_quote(n)}, {lua_quote(v)}), 'header')" for n, v in headers
    ]
    if abort:
        lines.append("check(mt.abort(conn), 'abort')")
        return "\n".join(lines)
    macros = {**({"i": queue_id} if queue_id is not None else {}), **client}
    if macros:
        pairs = ", ".join(f"{lua_quote(k)}, {lua_quote(v)}" for k, v in macros.items())
        lines.append(f"mt.macro(conn, SMFIC_EOM, {pairs})")
    lines += [
        "check(mt.eom(conn), 'eom')",
        f"if mt.getreply(conn) ~= {reply} then error('milter did not answer {reply}') end",
    ]
    return "\n".join(lines)


def run_miltertest(milter: MilterProcess, tmp_path: Path, *messages: str) -> str:
    script = "\n".join(
        [
            "function check(rc, what) if rc ~= nil then error(what .. ' failed') end end",
            'SMFIC_EOM = string.byte("E")  -- miltertest has no constant for it',
            f'conn = mt.connect("{libmilter_address(milter.socket)}")',
            "if conn == nil then error('cannot connect') end",
            *messages,
            "mt.disconnect(conn)",
        ]
    )
    path = tmp_path / "script.lua"
    path.write_text(script)
    result = subprocess.run(
        ["miltertest", "-s", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr + milter.log()
    return result.stdout


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    if shutil.which("miltertest") is None:
        pytest.fail("miltertest is not installed (Debian package miltertest); see .ci/run")
    root = tmp_path_factory.mktemp("miltertest")
    with MilterProcess(root / "state", f"unix:{root}/sock/milter.sock") as proc:
        yield proc


def counter(milter: MilterProcess, name: str) -> float:
    return milter.metrics().get(name, 0.0)


def header_count(milter: MilterProcess, state: str) -> float:
    return counter(milter, f'sendpost_milter_header_total{{state="{state}"}}')


def test_negotiation_skips_every_step_but_data_headers_and_eom(
    milter: MilterProcess, tmp_path: Path
) -> None:
    """Each step skipped is work Postfix and the milter do not do per message (pymilter
    1.0.5's @symlist once made the negotiation fail silently: Postfix sent every step
    and waited for each reply); miltertest refuses a skipped step. RCPT TO is kept: the
    envelope recipients are recorded (test below)."""
    steps = {
        "conninfo": 'mt.conninfo(conn, "localhost", "127.0.0.1")',
        "helo": 'mt.helo(conn, "client.example")',
        "mailfrom": 'mt.mailfrom(conn, "<sender@example.com>")',
        "eoh": "mt.eoh(conn)",
        "bodystring": 'mt.bodystring(conn, "hi\\r\\n")',
    }
    probes = [
        f"local ok, err = pcall(function() return {call} end)\n"
        f"mt.echo('{name} ' .. tostring(ok) .. ' ' .. tostring(err))"
        for name, call in steps.items()
    ]
    out = run_miltertest(
        milter, tmp_path, *probes, lua_message("5E5E5E5E5E", [("X-Sendpost-Message-UUID", CANON)])
    )
    for name in steps:
        assert f"{name} false mt.{name}(): negotiated SMFIP_NO" in out, out
    assert milter.entry("5E5E5E5E5E").uuid == CANON  # type: ignore[union-attr]
    log = milter.log()  # the macro list was asked for and taken, nothing failed
    assert "cannot ask the MTA" not in log and "macro list" not in log, log
    assert "internal error" not in log, log


def test_envelope_recipients_are_recorded_per_message(
    milter: MilterProcess, tmp_path: Path
) -> None:
    """What logwatch compares Postfix's deliveries with: each message's RCPT TO, without
    angle brackets and ESMTP arguments, case folded; an aborted message's are forgotten.
    Offered without a reply (as Postfix does) or with one, RCPT costs no error."""
    uuid_header = [("X-Sendpost-Message-UUID", CANON)]
    run_miltertest(
        milter,
        tmp_path,
        f"check(mt.negotiate(conn, nil, nil, {0x1FFFFF}), 'negotiate')",  # Postfix's offer
        lua_message(
            "RC00000001",
            uuid_header,
            recipients=('"<Alice@Example.COM>", "NOTIFY=NEVER"', '"<bob@example.com>"'),
        ),
        lua_message("RC00000002", uuid_header, abort=True, recipients=('"<eve@example.com>"',)),
        lua_message("RC00000003", uuid_header, recipients=('"<carol@example.com>"',)),
    )
    without_noreply = 0x1FFFFF & ~0x8000  # an MTA that wants a reply to RCPT TO
    run_miltertest(
        milter,
        tmp_path,
        f"check(mt.negotiate(conn, nil, nil, {without_noreply}), 'negotiate')",
        lua_message("RC00000005", uuid_header, recipients=('"<dave@example.com>"',)),
    )
    assert milter.entry("RC00000005").recipients == ("dave@example.com",)  # type: ignore[union-attr]
    first, third = milter.entry("RC00000001"), milter.entry("RC00000003")
    assert first is not None and first.recipients == ("alice@example.com", "bob@example.com")
    assert third is not None and third.recipients == ("carol@example.com",)
    assert "internal error" not in milter.log()


def test_a_recipient_that_is_not_utf8_is_stored_as_logwatch_reads_it(
    milter: MilterProcess, tmp_path: Path
) -> None:
    """RCPT TO bytes that are not UTF-8 are stored with U+FFFD, as logwatch decodes the
    log line naming them, so the two still match; the message's other recipient too."""
    run_miltertest(
        milter,
        tmp_path,
        lua_message(
            "RC00000011",
            [("X-Sendpost-Message-UUID", CANON)],
            recipients=('"<\\255Zz@Example.com>"', '"<b@example.com>"'),
        ),
    )
    entry = milter.entry("RC00000011")
    assert entry is not None
    assert entry.recipients == ("\ufffdzz@example.com", "b@example.com")
    assert "internal error" not in milter.log()


def test_header_present_is_recorded_canonical(milter: MilterProcess, tmp_path: Path) -> None:
    before = header_count(milter, "present")
    run_miltertest(
        milter,
        tmp_path,
        lua_message(
            "1A2B3C4D5E", [("Subject", "hi"), ("X-Sendpost-Message-UUID", f" <{CANON.upper()}>")]
        ),
    )
    entry = milter.entry("1A2B3C4D5E")
    assert entry is not None and entry.uuid == CANON and entry.header is HeaderState.PRESENT
    assert header_count(milter, "present") == before + 1


@pytest.mark.parametrize(
    ("headers", "state"),
    [
        ([("Subject", "no uuid here")], "missing"),
        ([("X-Sendpost-Message-UUID", CANON), ("x-sendpost-message-uuid", OTHER)], "repeated"),
        ([("X-Sendpost-Message-UUID", CANON), ("X-Sendpost-Message-UUID", CANON)], "repeated"),
        ([("X-Sendpost-Message-UUID", "not-a-uuid")], "invalid"),
        ([("X-Sendpost-Message-UUID", CANON + "junk")], "invalid"),
        # miltertest itself crashes on one header value over ~1 KB; the 60 KB case runs
        # through real Postfix in test_postfix_milter.py.
        ([("X-Sendpost-Message-UUID", "A" * 1000)], "invalid"),
        (
            [(f"X-Filler-{i}", "B" * 900) for i in range(300)]
            + [("X-Sendpost-Message-UUID", CANON)],
            "present",
        ),
    ],
    ids=[
        "missing",
        "repeated-different",
        "repeated-same",
        "garbage",
        "trailing-junk",
        "huge-value",
        "huge-header-block",
    ],
)
def test_every_header_state_is_accepted_recorded_and_counted(
    milter: MilterProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    headers: list[tuple[str, str]],
    state: str,
) -> None:
    queue_id = "9F" + request.node.callspec.id.upper().replace("-", "")[:10]
    before = header_count(milter, state)
    run_miltertest(milter, tmp_path, lua_message(queue_id, headers))
    entry = milter.entry(queue_id)
    assert entry is not None and entry.header.name.lower() == state
    assert (entry.uuid == CANON) if state == "present" else (entry.uuid is None)
    assert header_count(milter, state) == before + 1


def test_problem_header_is_logged_once_per_message(milter: MilterProcess, tmp_path: Path) -> None:
    run_miltertest(
        milter, tmp_path, lua_message("7E7E7E7E7E", [("X-Sendpost-Message-UUID", "bogus-7e7e")])
    )
    assert milter.log().count("queue ID 7E7E7E7E7E: X-Sendpost-Message-UUID header invalid") == 1


def test_missing_queue_id_macro_is_counted_and_still_accepted(
    milter: MilterProcess, tmp_path: Path
) -> None:
    before = counter(milter, "sendpost_milter_no_queue_id_total")
    run_miltertest(milter, tmp_path, lua_message(None, [("X-Sendpost-Message-UUID", CANON)]))
    assert counter(milter, "sendpost_milter_no_queue_id_total") == before + 1
    assert "no queue ID macro (i)" in milter.log()


def test_second_message_on_a_connection_does_not_inherit_the_first_header(
    milter: MilterProcess, tmp_path: Path
) -> None:
    run_miltertest(
        milter,
        tmp_path,
        lua_message("AAAA000001", [("X-Sendpost-Message-UUID", CANON)]),
        lua_message("AAAA000002", [("X-Sendpost-Message-UUID", OTHER)], abort=True),
        lua_message("AAAA000003", [("Subject", "second")]),
    )
    assert milter.entry("AAAA000001").uuid == CANON  # type: ignore[union-attr]
    assert milter.entry("AAAA000002") is None  # aborted: never queued, never recorded
    third = milter.entry("AAAA000003")
    assert third is not None and third.uuid is None and third.header is HeaderState.MISSING


def test_map_write_failure_still_accepts_and_is_counted(tmp_path: Path) -> None:
    with MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock") as proc:
        # A stray writer holds the lock longer than the milter's busy timeout.
        conn = sqlite3.connect(tmp_path / "state" / "queuemap.sqlite3")
        conn.execute("BEGIN EXCLUSIVE")
        try:
            run_miltertest(
                proc, tmp_path, lua_message("B0B0B0B0B0", [("X-Sendpost-Message-UUID", CANON)])
            )
            proc.settled()  # the row's commit was tried (after the answer) while locked
        finally:
            conn.rollback()
            conn.close()
        assert counter(proc, "sendpost_milter_map_write_errors_total") == 1
        assert "cannot write the queue map" in proc.log()


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_sigterm_stops_cleanly_and_a_restart_serves_at_once(tmp_path: Path, kind: str) -> None:
    address = f"unix:{tmp_path}/sock/m.sock" if kind == "unix" else f"inet:127.0.0.1:{free_port()}"
    first = MilterProcess(tmp_path / "state", address).start()
    run_miltertest(first, tmp_path, lua_message("C1C1C1C1C1", [("X-Sendpost-Message-UUID", CANON)]))
    assert first.stop() == 0
    assert "milter stopped" in first.log()
    if kind == "unix":
        assert not (tmp_path / "sock" / "m.sock").exists()
    with MilterProcess(tmp_path / "state", address) as second:
        run_miltertest(
            second, tmp_path, lua_message("C2C2C2C2C2", [("X-Sendpost-Message-UUID", OTHER)])
        )
        assert second.entry("C1C1C1C1C1").uuid == CANON  # type: ignore[union-attr]
        assert second.entry("C2C2C2C2C2").uuid == OTHER  # type: ignore[union-attr]
        assert "cannot" not in second.log()


def burst(prefix: str, count: int) -> list[str]:
    """Messages on one connection back to back, faster than one per group window: most
    rows are queued after their answer, not committed before it."""
    return [
        lua_message(f"{prefix}{i:05d}", [("X-Sendpost-Message-UUID", CANON)]) for i in range(count)
    ]


def map_ids(state_dir: Path) -> set[str]:
    """The queue IDs a reader (logwatch) sees in the map right now."""
    reader = MapReader(state_dir / "queuemap.sqlite3")
    try:
        return {queue_id for _, queue_id, _ in reader.scan(0, 1_000_000)}
    finally:
        reader.close()


def test_a_burst_is_committed_without_more_mail_or_a_stop(tmp_path: Path) -> None:
    """Rows queued after their answer reach the map by themselves: no later message and
    no stop is needed for logwatch to see them (within the group window; here a deadline
    for a loaded machine)."""
    with MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock") as proc:
        run_miltertest(proc, tmp_path, *burst("B1", 200))
        wanted = {f"B1{i:05d}" for i in range(200)}
        deadline = time.monotonic() + 10
        while not wanted <= (seen := map_ids(proc.state_dir)):
            assert time.monotonic() < deadline, f"{len(wanted - seen)} rows never committed"
            time.sleep(0.01)
        assert counter(proc, "sendpost_milter_map_rows_pending") == 0


def test_sigterm_right_after_a_burst_commits_every_row(tmp_path: Path) -> None:
    """Stopping the milter (systemctl stop sends SIGTERM) loses no answered message's row:
    the rows still queued are committed before it exits."""
    proc = MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock").start()
    run_miltertest(proc, tmp_path, *burst("B2", 300))
    assert proc.stop() == 0
    assert map_ids(tmp_path / "state") == {f"B2{i:05d}" for i in range(300)}
    assert "cannot write" not in proc.log()


def test_a_message_open_at_sigterm_is_logged_as_not_recorded(tmp_path: Path) -> None:
    """SIGTERM while a message is between RCPT TO and end-of-message: libmilter reads no
    more of it, so its row cannot be written; the stop says so (the MTA handles the
    message per its milter_default_action) instead of losing it silently."""
    proc = MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock").start()
    ready, go = tmp_path / "ready", tmp_path / "go"
    message = lua_message("OPEN0OPEN0", [("X-Sendpost-Message-UUID", CANON)])
    before_eom, eom = message.split("\nmt.macro(", 1)
    pause = (
        f"io.open({lua_quote(str(ready))}, 'w'):close()\n"
        f"while io.open({lua_quote(str(go))}) == nil do mt.sleep(0.01) end\n"
    )
    script = tmp_path / "open.lua"
    script.write_text(
        "\n".join(
            [
                "function check(rc, what) if rc ~= nil then error(what .. ' failed') end end",
                'SMFIC_EOM = string.byte("E")',
                f'conn = mt.connect("{libmilter_address(proc.socket)}")',
                "if conn == nil then error('cannot connect') end",
                before_eom,
                pause + "mt.macro(" + eom,
            ]
        )
    )
    client = subprocess.Popen(
        ["miltertest", "-s", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert client.poll() is None, client.communicate()[0]
        assert time.monotonic() < deadline, "miltertest never reached end-of-message"
        time.sleep(0.01)
    assert proc.stop() == 0
    go.touch()
    client.communicate(timeout=60)
    assert "stopping with 1 messages between RCPT TO and end-of-message" in proc.log()
    assert "milter stopped" in proc.log()


def test_messages_aborted_after_rcpt_to_are_not_reported_open_at_sigterm(
    tmp_path: Path,
) -> None:
    """A message RSET or dropped by the client after RCPT TO (Postfix sends abort) is
    over: a later stop must not report it as cut, nor count it as a lost row."""
    proc = MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock").start()
    header = [("X-Sendpost-Message-UUID", CANON)]
    run_miltertest(
        proc,
        tmp_path,
        lua_message("AB0RT00001", header, abort=True),
        lua_message("AB0RT00002", header),
        lua_message("AB0RT00003", [], abort=True, recipients=('"<a@example.com>"',) * 2),
    )
    # The last abort has no reply: wait until the milter closed the connection, which it
    # does only after handling every command sent on it.
    wait_connections_closed(proc.socket)
    assert proc.stop() == 0
    assert "stopping with" not in proc.log()
    assert map_ids(tmp_path / "state") == {"AB0RT00002"}


def wait_connections_closed(milter_socket: str, timeout: float = 30.0) -> None:
    """Until no connection accepted on the unix ``milter_socket`` is open (an accepted
    socket is listed in /proc/net/unix under the listener's path, state 03)."""
    path = milter_socket.removeprefix("unix:")
    deadline = time.monotonic() + timeout
    while any(
        fields[5] == "03" and fields[-1] == path
        for fields in (line.split() for line in Path("/proc/net/unix").read_text().splitlines())
        if len(fields) == 8
    ):
        assert time.monotonic() < deadline, f"connections to {path} still open"
        time.sleep(0.01)


def start_milter_command(tmp_path: Path, milter_socket: str) -> subprocess.CompletedProcess[str]:
    """`sendpost-agent milter` as an operator runs it, for a start that must fail."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sendpost_agent",
            "milter",
            "--state-dir",
            str(tmp_path / "state"),
            "--milter-listen",
            f"127.0.0.1:{free_port()}",
            "--milter-socket",
            milter_socket,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SENDPOST_CONFIG": "/dev/null"},
    )


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("/proc/sys/sendpost-test/m.sock", "/proc/sys/sendpost-test: No such file or directory"),
        ("{tmp}/a-file/m.sock", "{tmp}/a-file: File exists"),
    ],
    ids=["cannot-mkdir", "under-a-file"],
)
def test_socket_directory_that_cannot_be_created_is_a_start_error(
    tmp_path: Path, where: str, reason: str
) -> None:
    """One error line naming the key, the path and why; once a traceback (twice, when the
    socket clean-up at exit failed too)."""
    (tmp_path / "a-file").write_text("")
    milter_socket = "unix:" + where.format(tmp=tmp_path)
    result = start_milter_command(tmp_path, milter_socket)
    assert result.returncode == 1
    assert (
        f"ERROR sendpost_milter: milter-socket {milter_socket}: cannot create the"
        f" socket's directory {reason.format(tmp=tmp_path)}; create it (group postfix,"
        " mode 2750) or choose another milter-socket" in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_the_milter_tells_systemd_it_is_ready_once_its_socket_listens(
    tmp_path: Path, kind: str
) -> None:
    """The unit is Type=notify and Postfix is ordered after it: READY=1 must come only
    when Postfix can connect, else its first messages pass unseen."""
    address = f"unix:{tmp_path}/sock/m.sock" if kind == "unix" else f"inet:127.0.0.1:{free_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        milter = MilterProcess(tmp_path / "state", address)
        (tmp_path / "state").mkdir()
        proc = subprocess.Popen(
            milter.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "SENDPOST_CONFIG": "/dev/null",
                "NOTIFY_SOCKET": str(tmp_path / "notify"),
            },
        )
        try:
            assert notify.recv(100) == b"READY=1"
            connect(address, 1.0)  # raises if Postfix could not connect yet
        finally:
            proc.terminate()
            assert proc.wait(timeout=30) == 0


def test_a_second_milter_on_the_same_socket_refuses_and_leaves_the_first_serving(
    tmp_path: Path,
) -> None:
    """Started by hand beside the service: libmilter would take the socket over and
    remove it at exit, and Postfix would reach no milter at all."""
    address = f"unix:{tmp_path}/sock/m.sock"
    with MilterProcess(tmp_path / "state", address) as first:
        result = start_milter_command(tmp_path, address)
        assert result.returncode == 1
        assert f"milter-socket {address}: another milter is listening there" in result.stderr
        run_miltertest(
            first, tmp_path, lua_message("E1E1E1E1E1", [("X-Sendpost-Message-UUID", CANON)])
        )
        assert first.entry("E1E1E1E1E1").uuid == CANON  # type: ignore[union-attr]


def test_doctor_probe_is_recorded_and_discarded_only_with_the_key(
    milter: MilterProcess, tmp_path: Path
) -> None:
    key = load_key(milter.state_dir)
    assert key is not None, "the milter creates state-dir/probe.key at start"
    forged = "0123456789abcdef.00000000000000000000000000000000"
    run_miltertest(
        milter,
        tmp_path,
        lua_message(
            "D0C0000001",
            [("X-Sendpost-Message-UUID", CANON), ("X-Sendpost-Doctor-Probe", make_token(key))],
            reply="SMFIR_DISCARD",
        ),
        lua_message(
            "D0C0000002", [("X-Sendpost-Message-UUID", CANON), ("X-Sendpost-Doctor-Probe", forged)]
        ),
    )
    assert milter.entry("D0C0000001").uuid == CANON  # type: ignore[union-attr]
    assert milter.entry("D0C0000002").uuid == CANON  # type: ignore[union-attr]
    assert counter(milter, "sendpost_milter_doctor_probes_total") == 1


@pytest.mark.parametrize(
    "damage", [b"", b"\xff not a key\n", b"abcd\n"], ids=["empty", "garbage", "short"]
)
def test_damaged_probe_key_is_one_warning_and_probes_are_plain_mail(
    tmp_path: Path, damage: bytes
) -> None:
    """Once silent, and an empty file (truncated by a power loss) gave an empty key that
    anyone could make probes with: a forged one was discarded."""
    key_path = tmp_path / "state" / "probe.key"
    key_path.parent.mkdir()
    key_path.write_bytes(damage)
    with MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock") as proc:
        run_miltertest(
            proc,
            tmp_path,
            lua_message(
                "DA0A6E0001",
                [("X-Sendpost-Message-UUID", CANON), ("X-Sendpost-Doctor-Probe", make_token(b""))],
            ),
        )
        assert proc.entry("DA0A6E0001").uuid == CANON  # type: ignore[union-attr]
        warning = (
            f"WARNING sendpost_milter: {key_path} is damaged (it must hold 64 hex"
            " digits): doctor's probes cannot be recognised, so doctor will not send"
            f" one; fix: delete {key_path} and restart the milter, which writes a new"
            " key at start"
        )
        assert proc.log().count(warning) == 1, proc.log()
    assert key_path.read_bytes() == damage  # left for the operator, as the warning says


@pytest.mark.parametrize(
    "value",
    ["é.é", "\u00e9" * 40, "abc.\u0661\u0662", ".", ""],
    ids=["accented", "long-accented", "arabic-digits", "dot", "empty"],
)
def test_garbage_probe_header_is_accepted_like_any_message(
    milter: MilterProcess, tmp_path: Path, request: pytest.FixtureRequest, value: str
) -> None:
    """A forged probe header is only a header: the message is recorded and accepted.

    A non-ASCII value once raised in the MAC comparison, and pymilter's default answer
    to an exception is TEMPFAIL: Postfix deferred the message."""
    queue_id = "E0" + request.node.callspec.id.upper().replace("-", "")[:10]
    run_miltertest(
        milter,
        tmp_path,
        lua_message(
            queue_id, [("X-Sendpost-Doctor-Probe", value), ("X-Sendpost-Message-UUID", CANON)]
        ),
    )
    assert milter.entry(queue_id).uuid == CANON  # type: ignore[union-attr]
    assert "Traceback" not in milter.log()


def test_header_name_that_is_not_utf8_is_passed_over(milter: MilterProcess, tmp_path: Path) -> None:
    """pymilter cannot make a Python string of such a name and fails before calling us
    (it prints the error); the other headers and end-of-message still reach us."""
    bad_header = "check(mt.header(conn, 'X-Bad-\\255-Name', 'value'), 'header')\n"
    message = lua_message("F0F0F0F0F0", [("X-Sendpost-Message-UUID", CANON)])
    first_header = message.index("check(mt.header(")
    run_miltertest(milter, tmp_path, message[:first_header] + bad_header + message[first_header:])
    assert milter.entry("F0F0F0F0F0").uuid == CANON  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("client", "state"),
    [
        (OUTSIDER, "untrusted"),
        ({**OUTSIDER, "{auth_authen}": "sendpost"}, "present"),
        ({"{auth_authen}": "anyone"}, "present"),
        ({}, "untrusted"),
    ],
    ids=["outsider", "outsider-authenticated", "authenticated", "no-client-macro"],
)
def test_a_header_counts_from_an_authenticated_session_or_mynetworks_only(
    milter: MilterProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    client: dict[str, str],
    state: str,
) -> None:
    """The default trusted-clients: mynetworks, sasl (any login). An untrusted header is
    recorded without its UUID (a reused queue ID inherits nothing) and counted."""
    queue_id = "7A" + request.node.callspec.id.upper().replace("-", "")[:10]
    before = header_count(milter, state)
    run_miltertest(
        milter, tmp_path, lua_message(queue_id, [("X-Sendpost-Message-UUID", CANON)], client=client)
    )
    entry = milter.entry(queue_id)
    assert entry is not None and entry.header.name.lower() == state
    assert entry.uuid == (CANON if state == "present" else None)
    assert header_count(milter, state) == before + 1
    if state == "untrusted":
        warning = next(line for line in milter.log().splitlines() if queue_id in line)
        assert "not trusted" in warning and "trusted-clients" in warning, warning
        assert ("client 203.0.113.9" if client else "did not send ({client_addr})") in warning


def test_sasl_login_items_trust_only_those_logins(tmp_path: Path) -> None:
    with MilterProcess(
        tmp_path / "state", f"unix:{tmp_path}/sock/m.sock", "--trusted-clients", "sasl:sendpost"
    ) as proc:
        run_miltertest(
            proc,
            tmp_path,
            *(
                lua_message(f"5A5100000{i}", [("X-Sendpost-Message-UUID", CANON)], client=client)
                for i, client in enumerate(
                    [
                        {**OUTSIDER, "{auth_authen}": "sendpost"},
                        {**OUTSIDER, "{auth_authen}": "customer2"},
                        IN_MYNETWORKS,  # mynetworks is not in this trusted-clients
                    ]
                )
            ),
        )
        states = [proc.entry(f"5A5100000{i}").header for i in range(3)]  # type: ignore[union-attr]
        assert states == [HeaderState.PRESENT, HeaderState.UNTRUSTED, HeaderState.UNTRUSTED]
        assert "trusted from SASL logins sendpost (trusted-clients)" in proc.log()


def test_forged_headers_from_one_client_are_logged_once_and_all_counted(
    tmp_path: Path,
) -> None:
    with MilterProcess(tmp_path / "state", f"unix:{tmp_path}/sock/m.sock") as proc:
        messages = [
            lua_message(f"F1000000{i:02d}", [("X-Sendpost-Message-UUID", CANON)], client=OUTSIDER)
            for i in range(20)
        ]
        other = {"{client_addr}": "2001:db8::7"}
        messages.append(lua_message("F2000000", [("X-Sendpost-Message-UUID", CANON)], client=other))
        run_miltertest(proc, tmp_path, *messages)
        assert header_count(proc, "untrusted") == 21
        warnings = [line for line in proc.log().splitlines() if "not trusted" in line]
        assert len(warnings) == 2, warnings  # one per client address
        assert "client 2001:db8::7" in warnings[1]


def test_doctor_probe_is_recognised_from_an_untrusted_client_too(
    milter: MilterProcess, tmp_path: Path
) -> None:
    """The probe is proven by its key, not by the client: doctor works wherever it runs."""
    key = load_key(milter.state_dir)
    assert key is not None
    before = counter(milter, "sendpost_milter_doctor_probes_total")
    run_miltertest(
        milter,
        tmp_path,
        lua_message(
            "D0C0000003",
            [("X-Sendpost-Message-UUID", CANON), ("X-Sendpost-Doctor-Probe", make_token(key))],
            reply="SMFIR_DISCARD",
            client=OUTSIDER,
        ),
    )
    entry = milter.entry("D0C0000003")
    assert entry is not None and (entry.uuid, entry.header) == (CANON, HeaderState.PRESENT)
    assert counter(milter, "sendpost_milter_doctor_probes_total") == before + 1
