"""The ingestion API's event object, as the agent produces it."""

from __future__ import annotations

from datetime import datetime
from json.encoder import encode_basestring as _quote  # str -> JSON literal, non-ASCII kept
from typing import Final, NamedTuple

from logwatch.classify import EventType, Verdict


class Event(NamedTuple):
    message_id: str  # the SendPost message UUID
    event_type: EventType
    timestamp: datetime  # aware: encoded as RFC 3339 with the log's offset
    recipient: str
    smtp_code: int | None
    smtp_description: str

    @staticmethod
    def of(message_id: str, verdict: Verdict, when: datetime, recipient: str) -> Event:
        # tuple.__new__ skips the Python-level __new__: this runs once per event
        return _new(
            Event,
            (
                message_id,
                verdict.event_type,
                when,
                recipient,
                verdict.smtp_code,
                verdict.description,
            ),
        )

    def to_api(self) -> dict[str, object]:
        """The API's JSON object; optional fields are left out when unknown."""
        out: dict[str, object] = {
            "message_id": self.message_id,
            "event_type": self.event_type.value,
            "timestamp": self.timestamp.isoformat(),
        }
        if self.smtp_code is not None:
            out["smtp_code"] = self.smtp_code
        if self.smtp_description:
            out["smtp_description"] = self.smtp_description
        if self.recipient:
            out["recipient"] = self.recipient
        return out

    def to_json(self) -> str:
        """Same text as json.dumps(to_api()), built directly: this runs once per event.
        f-strings, not ``%``: compiled, they are joined without parsing a format."""
        global _last_stamp
        stamp = _last_stamp
        if stamp[0] is not self.timestamp:  # the events of one log second share a datetime
            stamp = _last_stamp = (self.timestamp, self.timestamp.isoformat())
        message_id, event_type, _, recipient, code, description = self
        head = (
            f'{{"message_id":{_quote(message_id)},"event_type":"{event_type._value_}",'
            f'"timestamp":"{stamp[1]}"'
        )
        if code is not None and description and recipient:  # nearly always: one string
            return (
                f'{head},"smtp_code":{int(code)},"smtp_description":{_quote(description)},'
                f'"recipient":{_quote(recipient)}}}'
            )
        text = head
        if code is not None:
            text += f',"smtp_code":{int(code)}'
        if description:
            text += f',"smtp_description":{_quote(description)}'
        if recipient:
            text += f',"recipient":{_quote(recipient)}'
        return text + "}"


_new: Final = tuple.__new__
_last_stamp: tuple[datetime | None, str] = (None, "")  # one tuple: a thread sees a matching pair
