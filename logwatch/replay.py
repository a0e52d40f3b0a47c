"""`sendpost-agent replay FILE...`: old logs through the same pipeline as logwatch."""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from logwatch.events import Event
from logwatch.journal import read_journal_batches
from logwatch.logfile import LogUnreadable, read_file_batches
from logwatch.parse import Clock
from logwatch.pipeline import Pipeline
from logwatch.relays import ContentFilters
from logwatch.wal import Wal
from sendpost_agent.config import Config, ConfigError, Secret
from sendpost_agent.queuemap import MapError, MapReader
from sendpost_agent.trust import info_line_check

log = logging.getLogger(__name__)
SEND_TIMEOUT = 600.0


def replay(
    config: Config,
    files: list[Path],
    send: bool = False,
    out: TextIO = sys.stdout,
    journal: JournalSpan | None = None,
) -> int:
    """Print one API event object per line (or ship them with ``send``); a summary of what
    gave no event goes to the log.

    Files are read in the order given (oldest first, like the log was written); year-less
    timestamps take their year from the newest file's modification time. ``journal``:
    the systemd journal's entries (``journal-match``, ``journal-directory``) in that
    span, after the files.
    """
    if send:
        api_key = config.require_api_key("for replay --send")
        with tempfile.TemporaryDirectory(prefix="sendpost-replay-") as tmp:
            wal = Wal(Path(tmp) / "replay.wal")
            try:
                encoded = io.StringIO()
                status = _replay(config, files, encoded, journal)
                if status == 0:
                    wal.append([line.encode() for line in encoded.getvalue().splitlines()])
                    status = asyncio.run(_ship(config, api_key, wal))
            finally:
                wal.close()
        return status
    return _replay(config, files, out, journal)


async def _ship(config: Config, api_key: Secret, wal: Wal) -> int:
    """Send everything now (no batch window); give up after SEND_TIMEOUT without success."""
    from logwatch.shipper import Shipper  # its HTTP client's imports take 0.2 s

    config.state_dir.mkdir(parents=True, exist_ok=True)
    shipper = Shipper(
        wal,
        config.endpoint,
        api_key,
        config.dead_letter_path,
        lambda _: None,
        max_requests_per_minute=config.max_requests_per_minute,
    )
    stop = asyncio.Event()
    stop.set()
    await shipper.run(stop, flush_within=SEND_TIMEOUT)
    if wal.pending:
        log.error(
            "%d events could not be sent (%s); nothing was lost: run replay --send again",
            wal.pending,
            shipper.last_error,
        )
        return 1
    log.info(
        "sent %d events (%d set aside in %s)",
        shipper.events_sent,
        shipper.dead_lettered,
        config.dead_letter_path,
    )
    return 0


@dataclass(frozen=True)
class JournalSpan:
    """``replay --journal``: entries between ``since`` and ``until`` (Unix time)."""

    since: float | None = None
    until: float | None = None


def _batches(
    config: Config, files: list[Path], journal: JournalSpan | None, wanted: Callable[[str], bool]
) -> Iterator[tuple[list[bytes], int | None]]:
    """Batches of lines, with how many lines were read for them when a source left out
    those that cannot matter (the journal)."""
    for path in files:
        for lines in read_file_batches(path):
            yield lines, None
    if journal is not None:
        yield from read_journal_batches(
            config.journal_match, config.journal_directory, journal.since, journal.until, wanted
        )


def _replay(config: Config, files: list[Path], out: TextIO, journal: JournalSpan | None) -> int:
    for path in files:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file to replay")
    reader = open_map(config)
    filters = ContentFilters.from_postfix(config.postfix_config_dir)
    now = datetime.fromtimestamp(newest_mtime(files) if files else time.time(), UTC)
    trusts = info_line_check(config.trusted_clients, config.postfix_config_dir)
    pipeline = Pipeline(config, reader, filters, Clock(config.tzinfo, now), trusts)
    events = 0
    try:
        for lines, read in _batches(config, files, journal, pipeline.wants):
            events += _write(out, pipeline.process(lines, read))
        events += _write(out, pipeline.finish())
    except OSError as exc:
        log.error("cannot read %s: %s", getattr(exc, "filename", "?"), exc.strerror or exc)
        return 1
    except LogUnreadable as exc:
        log.error("%s", exc)
        return 1
    except MapError as exc:
        log.error("%s; nothing after the lines replayed so far was joined", exc)
        return 1
    finally:
        if reader is not None:
            reader.close()
    out.flush()
    log.info(
        "replayed %d lines, %d parsed, %d events; without event: %s",
        pipeline.lines_read,
        pipeline.lines_parsed,
        events,
        ", ".join(f"{k}={v}" for k, v in sorted(pipeline.counts().items())) or "none",
    )
    return 0


def _write(out: TextIO, events: list[Event]) -> int:
    out.write("".join([event.to_json() + "\n" for event in events]))
    return len(events)


def open_map(config: Config) -> MapReader | None:
    """The milter's map, or None (with a warning) when this host has none yet."""
    if not config.map_path.exists():
        log.warning(
            "%s does not exist: is the milter running with state-dir %s? Without"
            " it only header_checks INFO lines can be correlated",
            config.map_path,
            config.state_dir,
        )
        return None
    try:
        return MapReader(config.map_path)
    except MapError as exc:
        log.error("%s", exc)
        return None


def newest_mtime(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths), default=0.0)
