"""logwatch reading Postfix's log from the systemd journal (``log-source: journal``).

Real journal files written by systemd-journal-remote, read through the real libsystemd
(python3-systemd): the agent follows them, resumes at the journal's cursor after a stop or a crash without
losing or repeating an event, notices a saved cursor the journal has vacuumed, and
reads every Postfix instance. A crash is the agent dying between two cursor saves (in
this process, at a chosen point, as in test_agent_recovery.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logwatch.agent import Agent
from logwatch.cursor import JournalPosition, load_cursor
from logwatch.journal import JournalReader, journal_time, read_journal_batches
from logwatch.lines import MAX_LINE
from logwatch.parse import Clock, Delivery, parse_line
from logwatch.replay import JournalSpan, replay
from sendpost_agent.config import Config, ConfigError, load_config
from tests.support.agent import LogwatchProcess
from tests.support.ingest import IngestServer
from tests.support.journal import entry, needs_remote, write_journal, write_lines
from tests.support.maillog import (
    START,
    expected_events,
    message,
    queue_id,
    record_messages,
    stamp,
)
from tests.support.postfix import free_port

KEY = "sp-test-key-0123456789"
OTHER_BOOT = "fedcba9876543210fedcba9876543210"  # the boot after a reboot

NEVER = float("inf")  # as _saved_at: the agent saves no cursor on its own


def lines_of(numbers: range) -> list[str]:
    out: list[str] = []
    for n in numbers:
        out += message(n, START + timedelta(seconds=n), bounce=n % 7 == 0)
    return out


def expected(numbers: range) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for n in numbers:
        out |= expected_events(n, n % 7 == 0)
    return out


def config(tmp_path: Path, journal: Path, source: str = "journal") -> Config:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (tmp_path / "config.yaml").write_text(
        f'api-key: "sp-test-key"\nstate-dir: "{state}"\nlog-source: {source}\n'
        f'journal-directory: "{journal}"\nlog-timezone: UTC\nmap-retention: 3650d\n'
        f'log-path: "{tmp_path / "mail.log"}"\n'
        f'endpoint: "http://127.0.0.1:9/events"\nlisten: "127.0.0.1:{free_port()}"\n'
        f'postfix-config-dir: "{tmp_path}"\n'
    )
    return load_config({}, tmp_path / "config.yaml", {})


def journal_site(tmp_path: Path, messages: int) -> tuple[Path, Config]:
    """A journal file to write, the config reading its directory, the map of messages."""
    journal = tmp_path / "journal" / "mail.journal"
    cfg = config(tmp_path, journal.parent)
    record_messages(cfg.state_dir, range(messages))
    return journal, cfg


def read_on(
    agent: Agent, save_after: int | None = None, then: Callable[[], None] | None = None
) -> None:
    """Take every batch there is, saving a cursor only after batch ``save_after`` and
    calling ``then`` right after that save (e.g. to grow the journal being followed)."""

    async def run() -> None:
        taken = 0
        while True:
            try:
                batch = await asyncio.wait_for(agent.follower.next_batch(), 2.0)
            except TimeoutError:
                agent.follower.close()  # in the loop that watched the journal
                return
            agent._saved_at = NEVER
            agent._take(batch)
            taken += 1
            if taken == save_after:
                agent._save_cursor()
                if then is not None:
                    then()

    asyncio.run(run())


def catch_up(cfg: Config, clean_stop: bool = True) -> dict[str, object]:
    """A logwatch that reads every entry there is, then stops (its cursor saved, as on
    SIGTERM) or crashes; its /health before it stopped."""
    agent = Agent(cfg)
    read_on(agent)
    if clean_stop:
        agent._save_cursor()
    health = agent.snapshot().to_health()
    crash(agent)
    return health


def journal_agent(
    state: Path, server: IngestServer, directory: Path, *flags: str
) -> LogwatchProcess:
    """The real logwatch process reading journal files in ``directory``."""
    return LogwatchProcess(
        state,
        state.parent / "no-mail.log",
        server.url,
        KEY,
        "--log-source",
        "journal",
        "--journal-directory",
        str(directory),
        *flags,
    )


def crash(agent: Agent) -> None:
    agent.wal.close()
    agent.follower.close()
    agent._map.close()


def wal_events(cfg: Config) -> Counter[tuple[str, str, str]]:
    agent = Agent(cfg)
    events = [json.loads(data) for _, data in agent.wal.read(0, 10**6)]
    crash(agent)
    return Counter((e["message_id"], e["event_type"], e["recipient"]) for e in events)


# -- entries -> lines ------------------------------------------------------------------


def read_lines(directory: Path, wanted: Callable[[str], bool] | None = None) -> list[bytes]:
    return [
        line for batch, _ in read_journal_batches([], directory, wanted=wanted) for line in batch
    ]


@needs_remote
@pytest.mark.integration
def test_an_entry_becomes_a_line_with_its_exact_time_whatever_its_fields(tmp_path: Path) -> None:
    """Binary values (a NUL, a newline: journald stores them so), a missing program, and a
    message longer than a line may be (cut and counted)."""
    fields = entry("Nov 23 17:00:00 mx postfix/smtp[42]: ABCDE: removed", seq=123_456)
    binary = {**fields, "__REALTIME_TIMESTAMP": str(1_795_453_201_000_007)}
    binary["MESSAGE"] = "bin\0ary\nvalue"
    no_ident = {k: v for k, v in fields.items() if k != "SYSLOG_IDENTIFIER"}
    no_ident["__REALTIME_TIMESTAMP"] = str(1_795_453_202_000_000)
    long = {**no_ident, "__REALTIME_TIMESTAMP": str(1_795_453_203_000_000)}
    long["MESSAGE"] = "x" * (MAX_LINE + 10)
    write_journal(tmp_path / "j" / "mail.journal", [fields, binary, no_ident, long])
    reader = JournalReader([], None, directory=tmp_path / "j")

    async def lines() -> list[bytes]:
        try:
            return (await asyncio.wait_for(reader.next_batch(), 10)).lines
        finally:
            reader.close()

    got = asyncio.run(lines())
    assert got[:3] == [
        b"2026-11-23T17:00:00.123456+00:00 - postfix/smtp: ABCDE: removed",
        b"2026-11-23T17:00:01.000007+00:00 - postfix/smtp: bin\0ary value",
        b"2026-11-23T17:00:02.000000+00:00 - -: ABCDE: removed",
    ]
    assert len(got) == 4 and reader.lines_cut == 1 and len(got[3]) == MAX_LINE


@needs_remote
@pytest.mark.integration
def test_only_entries_whose_message_may_matter_are_read_further(tmp_path: Path) -> None:
    """The other fields of an entry are read only when its message passes the test; the
    lines made are the same, in the same order, as from every entry."""
    write_lines(tmp_path / "j" / "mail.journal", lines_of(range(3)))
    every = read_lines(tmp_path / "j")
    seen: list[str] = []

    def wanted(message: str) -> bool:
        seen.append(message)
        return "status=" in message

    some = read_lines(tmp_path / "j", wanted)
    assert len(seen) == len(every) == 15
    assert some == [line for line in every if b"status=" in line] and 0 < len(some) < 15


@needs_remote
@pytest.mark.integration
def test_a_line_from_the_journal_parses_with_its_zone(tmp_path: Path) -> None:
    write_journal(
        tmp_path / "j" / "mail.journal",
        [
            entry(
                "Nov 23 17:00:00 mx postfix/smtp[42]: ABCDE12345: to=<a@example.com>,"
                " relay=mx[1.2.3.4]:25, delay=1, dsn=2.0.0, status=sent (250 ok)",
                seq=250_000,
            )
        ],
    )
    (line,) = read_lines(tmp_path / "j")
    record = parse_line(line.decode(), Clock(None))
    assert type(record) is Delivery
    assert record.time == datetime.fromisoformat("2026-11-23T17:00:00.250000+00:00")
    assert record.time.utcoffset() is not None


@pytest.mark.unit
def test_replay_times_take_journalctls_common_forms_and_name_them_when_wrong() -> None:
    now = datetime(2026, 11, 23, 18, 30, tzinfo=UTC).timestamp()
    assert journal_time("@1795453200.5", now) == 1795453200.5
    assert journal_time("-2h", now) == now - 7200
    assert journal_time("now", now) == now
    assert journal_time("2026-11-23T18:00:15+00:00", now) == now - 1785
    local = datetime(2026, 11, 23, 18, 0).timestamp()  # naive: this host's time zone
    assert journal_time("2026-11-23 18:00", now) == local
    assert journal_time("today", now) <= now < journal_time("today", now) + 86400
    assert journal_time("yesterday", now) < journal_time("today", now)
    with pytest.raises(ValueError, match="'soon' is not a time: use @UNIXTIME"):
        journal_time("soon", now)


# -- real journal files ----------------------------------------------------------------


@needs_remote
@pytest.mark.integration
def test_follows_new_entries_and_resumes_at_the_cursor_after_a_stop(tmp_path: Path) -> None:
    journal, cfg = journal_site(tmp_path, 40)
    write_lines(journal, lines_of(range(10)))

    async def follow() -> list[bytes]:
        reader = JournalReader(cfg.journal_match, None, directory=journal.parent)
        got: list[bytes] = []
        try:
            while len(got) < 50:
                got += (await asyncio.wait_for(reader.next_batch(), 10)).lines
            # the journal grows while it is followed
            write_lines(journal, lines_of(range(10, 20)), first_seq=50)
            while len(got) < 100:
                got += (await asyncio.wait_for(reader.next_batch(), 10)).lines
        finally:
            reader.close()
        return got

    lines = asyncio.run(follow())
    assert len(lines) == 100
    assert lines[50].startswith(b"2026-11-23T18:00:10.000050+00:00 - postfix/smtpd:")

    catch_up(cfg)
    write_lines(journal, lines_of(range(20, 40)), first_seq=100)
    catch_up(cfg, clean_stop=False)
    events = wal_events(cfg)
    assert set(events) == expected(range(40))
    assert max(events.values()) == 1, "events written twice"
    saved = load_cursor(cfg.cursor_path)
    assert saved is not None and isinstance(saved[0], JournalPosition)


@needs_remote
@pytest.mark.integration
def test_a_crash_between_cursor_saves_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Events appended to the WAL after the last cursor save are recognised when the
    journal is read again from the cursor: none lost, none written twice."""
    journal, cfg = journal_site(tmp_path, 300)
    write_lines(journal, lines_of(range(50)))
    first = Agent(cfg)
    # the entries written after the save arrive in later batches: the WAL then holds
    # more events than the cursor counts, whatever size the first batch had
    read_on(
        first,
        save_after=1,
        then=lambda: write_lines(journal, lines_of(range(50, 100)), first_seq=250),
    )
    crash(first)
    write_lines(journal, lines_of(range(100, 300)), first_seq=500)
    second = Agent(cfg)
    assert second._remembered is not None
    read_on(second)
    crash(second)
    events = wal_events(cfg)
    assert set(events) == expected(range(300)), "events lost"
    assert max(events.values()) == 1, "events written twice"


@needs_remote
@pytest.mark.integration
def test_a_vacuumed_cursor_resumes_at_the_oldest_entry_and_counts_the_gap(
    tmp_path: Path,
) -> None:
    """journald deletes whole old journal files (vacuum): the saved entry is gone."""
    directory = tmp_path / "journal"
    old, new = directory / "old.journal", directory / "new.journal"
    cfg = config(tmp_path, directory)
    record_messages(cfg.state_dir, range(30))
    write_lines(old, lines_of(range(10)))
    catch_up(cfg)
    write_lines(old, lines_of(range(10, 20)), first_seq=50)  # logged while stopped...
    write_lines(new, lines_of(range(20, 30)), first_seq=100)
    old.unlink()  # ...and vacuumed with its file
    health = catch_up(cfg, clean_stop=False)
    events = wal_events(cfg)
    assert set(events) == expected(range(10)) | expected(range(20, 30))
    assert max(events.values()) == 1
    assert health["journal_gaps"] == 1
    assert "no longer holds" in str(health["journal_gap"])
    assert health["log_source"] == "journal"


@needs_remote
@pytest.mark.integration
def test_after_a_reboot_the_earlier_boots_entries_after_the_cursor_are_read(
    tmp_path: Path,
) -> None:
    """A reader of the current boot only (journalctl --follow's default) would lose the
    entries logged between the last cursor save and the shutdown, and take the saved
    cursor for vacuumed."""
    journal, cfg = journal_site(tmp_path, 30)
    write_lines(journal, lines_of(range(10)))
    catch_up(cfg)
    write_lines(journal, lines_of(range(10, 20)), first_seq=50)  # before the shutdown
    write_lines(journal, lines_of(range(20, 30)), first_seq=100, boot=OTHER_BOOT)
    health = catch_up(cfg, clean_stop=False)
    events = wal_events(cfg)
    assert set(events) == expected(range(30)), "events lost"
    assert max(events.values()) == 1
    assert health["journal_gaps"] == 0


def rsyslog_line(fields: dict[str, str]) -> str:
    """A journal entry as Debian 12's rsyslog writes it to mail.log: stamped to the
    microsecond when journald passed it on (100 us after journald stored it)."""
    usec = int(fields["__REALTIME_TIMESTAMP"]) + 100
    when = datetime.fromtimestamp(usec // 10**6, UTC) + timedelta(microseconds=usec % 10**6)
    return (
        f"{when.isoformat()} {fields['_HOSTNAME']} {fields['SYSLOG_IDENTIFIER']}"
        f"[{fields['_PID']}]: {fields['MESSAGE']}"
    )


def read_the_journal_after_the_file(tmp_path: Path, directory: Path, file_cfg: Config) -> None:
    """logwatch switched to the journal reads it all (and crashes): messages 0-19, the
    first 10 shipped from the file, give each event once."""
    catch_up(config(tmp_path, directory), clean_stop=False)
    events = wal_events(file_cfg)
    assert set(events) == expected(range(20)), "events lost"
    assert max(events.values()) == 1, "events shipped from the file shipped again"


@needs_remote
@pytest.mark.integration
@pytest.mark.parametrize("case", ["plain", "racing", "file removed"])
def test_after_the_file_source_the_journal_repeats_and_loses_nothing(
    tmp_path: Path, case: str
) -> None:
    """log-source changed from file to journal (setup on a host whose syslog daemon was
    removed): the journal is read after the last line read from the file. Racing: the
    next message's entries were stored by journald after that line but before rsyslog
    stamped it (and were not in the file yet): they are read too. With the file removed
    (rsyslog purged with its log) the journal is read from that line's time."""
    racing = case == "racing"
    directory = tmp_path / "journal"
    journal = directory / "mail.journal"
    file_cfg = config(tmp_path, directory, source="file")
    record_messages(file_cfg.state_dir, range(20))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    at = [min(n, 9) if racing and n == 10 else n for n in range(20)]  # whole seconds
    entries = [
        entry(line, year=base.year, seq=n * 10 + i)
        for n in range(20)
        for i, line in enumerate(message(n, base + timedelta(seconds=at[n]), bounce=n % 7 == 0))
    ]
    write_journal(journal, entries)
    half = len(entries) // 2  # messages 0-9: in the file, shipped from it
    file_cfg.log_path.write_text("".join(rsyslog_line(e) + "\n" for e in entries[:half]))
    catch_up(file_cfg)  # stopped cleanly: setup restarts logwatch
    assert set(wal_events(file_cfg)) == expected(range(10))
    if case == "file removed":
        file_cfg.log_path.unlink()
    read_the_journal_after_the_file(tmp_path, directory, file_cfg)


DISCONNECT = "postfix/smtpd[5235]: disconnect from localhost[127.0.0.1] ehlo=1 commands=5"


@needs_remote
@pytest.mark.integration
@pytest.mark.parametrize("journal_host", ["mx", "mx.example.com"])
def test_after_the_file_source_a_repeated_last_line_repeats_and_loses_nothing(
    tmp_path: Path, journal_host: str
) -> None:
    """The file's last line, an smtpd's ``disconnect from`` line, is logged the same for
    every connection: the journal is read after its last copy before that line's time,
    not after an earlier one (which would ship the message between twice). rsyslog
    writes the short host name, journald's _HOSTNAME may be the full one: the line is
    found all the same, so the next message's entries journald stored before rsyslog
    stamped that line are read too."""
    directory = tmp_path / "journal"
    journal = directory / "mail.journal"
    file_cfg = config(tmp_path, directory, source="file")
    record_messages(file_cfg.state_dir, range(20))
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
    entries: list[dict[str, str]] = []
    for n in range(20):
        when = base + timedelta(seconds=min(n, 9))  # message 10 races the last file line
        entries += [
            entry(line, year=base.year, seq=n * 10 + i)
            for i, line in enumerate(message(n, when, bounce=n % 7 == 0))
        ]
        if n in (8, 9):
            entries.append(entry(f"{stamp(when)} mx {DISCONNECT}", year=base.year, seq=n * 10 + 9))
    file_lines = "".join(rsyslog_line(e) + "\n" for e in entries[: 10 * 5 + 2])
    assert file_lines.splitlines()[-1].endswith(DISCONNECT)
    for e in entries:
        e["_HOSTNAME"] = journal_host
    write_journal(journal, entries)
    file_cfg.log_path.write_text(file_lines)
    catch_up(file_cfg)
    assert set(wal_events(file_cfg)) == expected(range(10))
    read_the_journal_after_the_file(tmp_path, directory, file_cfg)


@needs_remote
@pytest.mark.integration
def test_back_to_the_file_after_the_journal_ships_no_line_of_the_file_again(
    tmp_path: Path,
) -> None:
    """log-source file over a journal cursor (setup --with-rsyslog on a host set up for
    the journal): the file is read from its end, not its start, so the events the
    journal shipped (in the file too, rsyslog wrote them) are not shipped again."""
    journal, cfg = journal_site(tmp_path, 10)
    write_lines(journal, lines_of(range(10)))
    catch_up(cfg)
    saved = load_cursor(cfg.cursor_path)
    assert saved is not None and isinstance(saved[0], JournalPosition)
    assert set(wal_events(cfg)) == expected(range(10))
    file_cfg = config(tmp_path, journal.parent, source="file")
    file_cfg.log_path.write_text("".join(line + "\n" for line in lines_of(range(10))))
    catch_up(file_cfg)
    events = wal_events(cfg)
    assert set(events) == expected(range(10))
    assert max(events.values()) == 1, "events the journal shipped shipped again from the file"


@needs_remote
@pytest.mark.integration
def test_every_postfix_instance_is_read_and_other_facilities_are_not(tmp_path: Path) -> None:
    journal, cfg = journal_site(tmp_path, 4)
    out = [line.replace("postfix/", "postfix-out/") for line in lines_of(range(2, 4))]
    write_lines(journal, lines_of(range(2)) + out)
    write_lines(
        journal,
        [f"Nov 23 18:00:09 mx sshd[77]: {queue_id(9)}: to=<x@example.com>, status=sent"],
        first_seq=20,
        facility=4,
    )
    agent = Agent(cfg)
    read_on(agent)
    lines_read = agent.pipeline.lines_read
    crash(agent)
    assert set(wal_events(cfg)) == expected(range(4))
    assert lines_read == 20  # the auth facility's entry was not read


@needs_remote
@pytest.mark.integration
def test_kill_9_repeatedly_while_reading_the_journal_loses_nothing(tmp_path: Path) -> None:
    """The real logwatch process, killed -9 while entries flow, restarted each time:
    every event arrives; duplicates only as far as the batch in flight at each kill."""
    journal = tmp_path / "journal" / "mail.journal"
    state = tmp_path / "state"
    total, kills = 1500, 4
    record_messages(state, range(total))
    rng = random.Random(11)
    with IngestServer(KEY) as server:
        agent = journal_agent(
            state,
            server,
            journal.parent,
            "--map-retention",
            "3650d",  # the lines are of 2026-11-23: read them on a first start
        )
        write_lines(journal, lines_of(range(0, 300)))
        written = 300
        agent.start()
        for _ in range(kills):
            chunk = rng.randrange(200, 400)
            write_lines(journal, lines_of(range(written, written + chunk)), first_seq=written * 5)
            written += chunk
            time.sleep(rng.uniform(0.05, 1.0))
            agent.kill()
            agent.start()
        write_lines(journal, lines_of(range(written, total)), first_seq=written * 5)
        server.wait_for_events(len(expected(range(total))), timeout=90)
        time.sleep(1.0)
        status, health = agent.health()
        agent.stop()
        got = [(e["message_id"], e["event_type"], e["recipient"]) for e in server.accepted]
    assert set(got) == expected(range(total)), "events lost or invented"
    duplicates = sum(n - 1 for n in Counter(got).values())
    assert duplicates <= kills * 100, f"{duplicates} duplicates for {kills} kills"
    assert (status, health["log_source"], health["journal_gaps"]) == (200, "journal", 0)


@pytest.mark.unit
def test_journal_keys_are_checked_with_the_key_named() -> None:
    cfg = load_config(
        {"log-source": "journal", "journal-match": "SYSLOG_IDENTIFIER=postfix/smtp + _PID=1"},
        Path("/dev/null"),
        {},
    )
    assert cfg.journal_match == ("SYSLOG_IDENTIFIER=postfix/smtp", "+", "_PID=1")
    with pytest.raises(ConfigError, match="key 'journal-match': 'postfix' is not a journal match"):
        load_config({"journal-match": "postfix"}, Path("/dev/null"), {})
    with pytest.raises(ConfigError, match="key 'log-source': 'syslog' is not 'file'"):
        load_config({"log-source": "syslog"}, Path("/dev/null"), {})


@pytest.mark.unit
@pytest.mark.parametrize(
    "match", ["+ SYSLOG_FACILITY=2", "SYSLOG_FACILITY=2 +", "SYSLOG_FACILITY=2 + + _PID=1", "+"]
)
def test_a_stray_plus_in_journal_match_is_refused_with_the_fix(match: str) -> None:
    """journalctl refuses a '+' without a match on both sides; so does the config: an
    empty alternative would read every entry."""
    with pytest.raises(ConfigError, match=r"key 'journal-match': .*remove the stray '\+'"):
        load_config({"journal-match": match}, Path("/dev/null"), {})


@pytest.mark.integration
def test_an_unreadable_journal_makes_health_say_why(tmp_path: Path) -> None:
    """A journal that cannot be opened (here: no such directory) is reported and retried,
    not a crash."""
    with (
        IngestServer(KEY) as server,
        journal_agent(tmp_path / "state", server, tmp_path / "missing") as agent,
    ):
        deadline = time.monotonic() + 20
        while (health := agent.health())[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
    status, body = health
    assert status == 503
    reasons = " ".join(map(str, body["reasons"]))  # type: ignore[call-overload]
    assert f"journal files in {tmp_path / 'missing'}: it does not exist" in reasons
    assert "set journal-directory" in reasons


@needs_remote
@pytest.mark.integration
def test_replay_of_the_journal_gives_the_events_of_the_file(tmp_path: Path) -> None:
    journal, cfg = journal_site(tmp_path, 30)
    mail_log = tmp_path / "mail.log"
    mail_log.write_text("\n".join(lines_of(range(30))) + "\n")
    write_lines(journal, lines_of(range(30)))
    from_file, from_journal = io.StringIO(), io.StringIO()
    assert replay(cfg, [mail_log], out=from_file) == 0
    assert replay(cfg, [], out=from_journal, journal=JournalSpan()) == 0

    def events(out: io.StringIO) -> list[tuple[str, str, str]]:
        docs = [json.loads(line) for line in out.getvalue().splitlines()]
        return [(e["message_id"], e["event_type"], e["recipient"]) for e in docs]

    assert events(from_journal) == events(from_file)
    assert set(events(from_journal)) == expected(range(30))
    first = json.loads(from_journal.getvalue().splitlines()[0])
    assert first["timestamp"].endswith("+00:00") and "." in first["timestamp"]  # exact, zoned
    late = JournalSpan(since=journal_time("2026-11-23T18:00:15+00:00"))
    after = io.StringIO()
    assert replay(cfg, [], out=after, journal=late) == 0
    assert set(events(after)) == expected(range(15, 30))
