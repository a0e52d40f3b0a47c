"""Damaged log lines through the parser and the tracker: nothing raises, every event valid.

Real Postfix lines (tests/data/postfix-samples) are mutated the ways a log gets damaged:
flipped bytes, lines cut short, two lines spliced together, NUL bytes, megabyte lines,
lines repeated or out of order, cut into batches anywhere. Whatever comes in, the
pipeline must neither raise nor meet an internal error (each one would cost a line), and
every event it produces must be one the ingestion API accepts (its contract is
tests/support/ingest.py's, written from the spec).

The examples are derandomized (the same ones on every run, in CI too); set
HYPOTHESIS_PROFILE=explore to search with fresh random examples.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logwatch.events import Event
from logwatch.parse import Clock, parse_block
from logwatch.pipeline import Pipeline
from logwatch.relays import ContentFilters
from logwatch.shipper import batch_body
from sendpost_agent.config import load_config
from sendpost_agent.queuemap import HeaderState, MapReader, MapWriter
from tests.support.ingest import parse_batch
from tests.support.samples import SAMPLES

pytestmark = pytest.mark.unit

settings.register_profile(
    "derandomized",
    derandomize=True,
    database=None,
    max_examples=60,
    deadline=5000,  # ms per example: a megabyte line is parsed in well under a second
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "explore", settings.get_profile("derandomized"), derandomize=False, max_examples=2000
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

NOW = datetime(2026, 11, 24, tzinfo=UTC)
MEGABYTE = 1 << 20


def corpus() -> list[bytes]:
    lines: list[bytes] = []
    for name in ("maillog.functional", "maillog.content-filter", "wild/lines.log"):
        path = SAMPLES / name
        assert path.is_file(), f"sample log missing: {path}"
        lines += [
            line
            for line in path.read_bytes().splitlines()
            if line.strip() and not line.startswith(b"#")
        ]
    return lines


LINES = corpus()
# Every queue ID of the corpus gets a row, so that mutated lines reach the tracker's
# joins and produce events, not only skips.
QUEUE_IDS = sorted(
    {m.decode() for m in re.findall(rb": ([0-9A-Za-z]{10,}|[0-9A-F]{6,}):", b"\n".join(LINES))}
)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("mutated")
    writer = MapWriter(directory / "map.sqlite3", 10 * 365 * 86400.0)
    for n, queue_id in enumerate(QUEUE_IDS):
        writer.put(
            queue_id, uuid.UUID(int=n + 1, version=4), HeaderState.PRESENT, now=NOW.timestamp()
        )
    writer.close()
    (directory / "config.yaml").write_text("")
    return directory


# -- mutations ---------------------------------------------------------------------------


def flip(line: bytes, at: int, mask: int) -> bytes:
    if not line:
        return bytes([mask])
    at %= len(line)
    return line[:at] + bytes([line[at] ^ mask]) + line[at + 1 :]


def cut(line: bytes, at: int) -> bytes:
    return line[: at % (len(line) + 1)]


def nul(line: bytes, at: int) -> bytes:
    at %= len(line) + 1
    return line[:at] + b"\x00" + line[at:]


def megabyte(line: bytes, at: int) -> bytes:
    """A field blown up to over a megabyte (a runaway reply text or address)."""
    at %= len(line) + 1
    filler = line[at : at + 16] or b"x"
    return line[:at] + filler * (MEGABYTE // len(filler) + 1) + line[at:]


def splice(line: bytes, at: int, other: bytes, other_at: int) -> bytes:
    """The start of one line and the rest of another (two writers interleaved)."""
    return line[: at % (len(line) + 1)] + other[other_at % (len(other) + 1) :]


positions = st.integers(min_value=0, max_value=1 << 16)
other_lines = st.integers(min_value=0, max_value=len(LINES) - 1)
mutation = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("cut"), positions),
    st.tuples(st.just("nul"), positions),
    st.tuples(st.just("megabyte"), positions),
    st.tuples(st.just("splice"), positions, other_lines, positions),
    st.tuples(st.just("repeat")),
)


def mutate(line: bytes, change: tuple[object, ...]) -> list[bytes]:
    """One line -> what the log holds instead (a repeat keeps the line twice)."""
    kind, *args = change
    if kind == "flip":
        return [flip(line, *args)]  # type: ignore[arg-type]
    if kind == "cut":
        return [cut(line, *args)]  # type: ignore[arg-type]
    if kind == "nul":
        return [nul(line, *args)]  # type: ignore[arg-type]
    if kind == "megabyte":
        return [megabyte(line, *args)]  # type: ignore[arg-type]
    if kind == "splice":
        at, other, other_at = args
        return [splice(line, at, LINES[other], other_at)]  # type: ignore[arg-type, index]
    return [line, line]


@st.composite
def damaged_logs(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    """A run of consecutive corpus lines, some damaged, some swapped, cut into batches."""
    start = draw(st.integers(0, len(LINES) - 1))
    lines = LINES[start : start + draw(st.integers(1, 80))]
    changes = draw(st.dictionaries(st.integers(0, len(lines) - 1), mutation, max_size=12))
    out: list[bytes] = []
    for n, line in enumerate(lines):
        out += mutate(line, changes[n]) if n in changes else [line]
    for a, b in draw(
        st.lists(st.tuples(st.integers(0, len(out) - 1), st.integers(0, len(out) - 1)), max_size=3)
    ):
        out[a], out[b] = out[b], out[a]
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(out) - 1)), max_size=5)))
    return out, cuts


def assert_accepted_by_the_api(event: Event) -> None:
    text = event.to_json()
    assert json.loads(text) == event.to_api(), text
    assert len(parse_batch(batch_body([text.encode()]))) == 1


@given(damaged_logs())
def test_damaged_lines_never_raise_and_every_event_is_valid(
    state: Path, damaged: tuple[list[bytes], list[int]]
) -> None:
    lines, cuts = damaged
    parse_block(lines, Clock(UTC, NOW))  # must not raise: the pipeline would fall back
    config = load_config({}, state / "config.yaml", {})
    pipe = Pipeline(config, MapReader(state / "map.sqlite3"), ContentFilters(), Clock(UTC, NOW))
    events: list[Event] = []
    for begin, end in zip([0, *cuts], [*cuts, len(lines)], strict=True):
        events += pipe.process(lines[begin:end])
    events += pipe.finish()
    assert pipe.skipped["internal error"] == 0
    assert pipe.lines_read == len(lines)
    for event in events:
        assert_accepted_by_the_api(event)


def test_the_undamaged_corpus_joins_and_gives_valid_events(state: Path) -> None:
    """The property above would hold vacuously if no line ever joined its map row."""
    config = load_config({}, state / "config.yaml", {})
    pipe = Pipeline(config, MapReader(state / "map.sqlite3"), ContentFilters(), Clock(UTC, NOW))
    events = pipe.process(LINES) + pipe.finish()
    assert len(events) > 100
    for event in events:
        assert_accepted_by_the_api(event)
