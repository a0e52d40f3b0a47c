"""The ingestion API's event object, as the agent produces it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring as _quote  # str -> JSON literal, non-ASCII kept

from logwatch.classify import EventType, Verdict
from sendpost_agent.fastinit import fast_constructor


@dataclass(frozen=True, slots=True)
class Event:
    message_id: str  # the SendPost message UUID
    event_type: EventType
    timestamp: datetime  # aware: encoded as RFC 3339 with the log's offset
    recipient: str
    smtp_code: int | None
    smtp_description: str

    @staticmethod
    def of(message_id: str, verdict: Verdict, when: datetime, recipient: str) -> Event:
        return _new_event(message_id, verdict.event_type, when, recipient, verdict.smtp_code,
                          verdict.description)

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
        """Same text as json.dumps(to_api()), built directly: this runs once per event."""
        text = (f'{{"message_id":{_quote(self.message_id)},"event_type":"{self.event_type.value}"'
                f',"timestamp":"{self.timestamp.isoformat()}"')
        if self.smtp_code is not None:
            text += f',"smtp_code":{int(self.smtp_code)}'
        if self.smtp_description:
            text += f',"smtp_description":{_quote(self.smtp_description)}'
        if self.recipient:
            text += f',"recipient":{_quote(self.recipient)}'
        return text + "}"


_new_event = fast_constructor(Event)
