"""One verdict of ``sendpost-agent doctor``: a check's name, status, detail and fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # pass, warn, fail, skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.upper()} {self.name}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text
