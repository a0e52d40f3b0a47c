"""`sendpost-agent replay FILE...`: old logs through the same pipeline as logwatch."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from logwatch.follow import read_file_batches
from logwatch.parse import Clock
from logwatch.pipeline import Pipeline, lookup_of, newest_mtime, open_map
from logwatch.relays import ContentFilters
from sendpost_agent.config import Config, ConfigError

log = logging.getLogger(__name__)


def replay(config: Config, files: list[Path], out: TextIO = sys.stdout) -> int:
    """Print one API event object per line; a summary of what gave no event goes to the log.

    Files are read in the order given (oldest first, like the log was written); year-less
    timestamps take their year from the newest file's modification time.
    """
    for path in files:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file to replay")
    reader = open_map(config)
    filters = ContentFilters.from_postfix(config.postfix_config_dir)
    now = datetime.fromtimestamp(newest_mtime(files), UTC)
    pipeline = Pipeline(config, lookup_of(reader), filters, Clock(config.tzinfo, now))
    events = 0
    try:
        for path in files:
            for batch in read_file_batches(path):
                for event in pipeline.process(batch):
                    out.write(event.to_json() + "\n")
                    events += 1
        for event in pipeline.finish():
            out.write(event.to_json() + "\n")
            events += 1
    except OSError as exc:
        log.error("cannot read %s: %s", getattr(exc, "filename", "?"), exc.strerror or exc)
        return 1
    finally:
        if reader is not None:
            reader.close()
    out.flush()
    log.info("replayed %d lines, %d parsed, %d events; without event: %s",
             pipeline.lines_read, pipeline.lines_parsed, events,
             ", ".join(f"{k}={v}" for k, v in sorted(pipeline.counts().items())) or "none")
    return 0
