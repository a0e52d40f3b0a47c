"""The cursor file: identity of a log file by content, atomic save, clear errors on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logwatch.cursor import (
    FINGERPRINT_BYTES,
    CursorError,
    FileId,
    Position,
    load_cursor,
    save_cursor,
)

pytestmark = pytest.mark.unit

CONTENT = b"".join(
    b"2026-11-23T18:35:%02d host postfix/smtp[1]: line %d\n" % (i % 60, i) for i in range(200)
)


def test_a_grown_file_still_matches_a_different_one_does_not() -> None:
    short = FileId.of(1, 2, CONTENT[:100])
    assert short.fingerprint_len == 100
    assert short.matches(9, 9, CONTENT[:FINGERPRINT_BYTES])  # grown, and even moved (gzip)
    assert not short.matches(1, 2, CONTENT[:99])  # shorter than what we saw: truncated
    assert not short.matches(1, 2, b"X" + CONTENT[1:FINGERPRINT_BYTES])  # same inode, new file
    full = FileId.of(1, 2, CONTENT)
    assert full.fingerprint_len == FINGERPRINT_BYTES
    assert full.matches(3, 4, CONTENT[:FINGERPRINT_BYTES])
    assert not full.matches(1, 2, CONTENT[: FINGERPRINT_BYTES - 1])


def test_an_empty_fingerprint_falls_back_to_the_inode() -> None:
    empty = FileId.of(1, 2, b"")
    assert empty.matches(1, 2, CONTENT[:FINGERPRINT_BYTES])
    assert not empty.matches(1, 3, b"")


def test_round_trip_keeps_position_and_state_and_records_the_time(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cursor"
    position = Position(FileId.of(7, 8, CONTENT, "/var/log/mail.log"), 12345)
    state = {"deferred": {"A438320C032": ["a@example.com"]}, "n": 3}
    save_cursor(path, position, state)
    loaded = load_cursor(path)
    assert loaded is not None
    got, got_state = loaded
    assert got == position and got_state == state
    assert got.file.name == "/var/log/mail.log"
    assert got.saved_at is not None and got.saved_at == pytest.approx(path.stat().st_mtime, abs=5)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cursor"]


def test_absent_cursor_is_none(tmp_path: Path) -> None:
    assert load_cursor(tmp_path / "cursor") is None


def test_a_failed_save_keeps_the_old_cursor_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    position = Position(FileId.of(7, 8, CONTENT), 10)
    save_cursor(path, position, {"a": 1})
    with pytest.raises(TypeError):
        save_cursor(path, Position(position.file, 20), {"a": object()})
    loaded = load_cursor(path)
    assert loaded is not None and loaded[0].offset == 10
    assert [p.name for p in tmp_path.iterdir()] == ["cursor"]


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    file = FileId.of(7, 8, CONTENT)
    save_cursor(path, Position(file, 10), {})
    inode = path.stat().st_ino
    save_cursor(path, Position(file, 20), {})
    assert path.stat().st_ino != inode  # renamed over, never rewritten in place
    loaded = load_cursor(path)
    assert loaded is not None and loaded[0].offset == 20


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        (b"", "Expecting value"),
        (b'{"version": 1, "file": {"dev": 1', "Expecting"),
        (b"\x80\x81garbage", "codec"),
        (b"[]", "not a JSON object"),
        (b'{"version": 9}', "unknown version 9"),
        (b'{"version": 1, "offset": 1, "state": {}}', "missing key 'file'"),
        (
            b'{"version": 1, "file": {"dev": 1, "inode": 2, "fingerprint": "ab", '
            b'"fingerprint_len": 2}, "offset": -1, "state": {}}',
            "'offset' is not a non-negative",
        ),
        (
            b'{"version": 1, "file": {"dev": 1, "inode": 2, "fingerprint": "ab", '
            b'"fingerprint_len": 2}, "offset": 1, "state": []}',
            "'state' is not an object",
        ),
        (
            b'{"version": 1, "file": {"dev": true, "inode": 2, "fingerprint": "ab", '
            b'"fingerprint_len": 2}, "offset": 1, "state": {}}',
            "'dev' is not a non-negative",
        ),
    ],
)
def test_a_corrupt_cursor_names_the_file_and_the_fix(
    tmp_path: Path, text: bytes, detail: str
) -> None:
    path = tmp_path / "cursor"
    path.write_bytes(text)
    with pytest.raises(CursorError) as info:
        load_cursor(path)
    message = str(info.value)
    assert str(path) in message and detail in message
    assert "delete it to start again at the end of the mail log" in message
    assert info.value.path == path


def test_an_unreadable_cursor_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    path.mkdir()  # reading fails like a permission problem would (tests may run as root)
    with pytest.raises(CursorError, match=rf"cannot read the cursor file {path}: .*readable"):
        load_cursor(path)


def test_the_file_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    save_cursor(path, Position(FileId(1, 2, "ab", 2, "/l"), 3), {"k": "v"})
    doc = json.loads(path.read_text())
    assert doc["file"] == {
        "dev": 1,
        "inode": 2,
        "fingerprint": "ab",
        "fingerprint_len": 2,
        "name": "/l",
    }
    assert doc["offset"] == 3 and doc["state"] == {"k": "v"} and doc["version"] == 1
