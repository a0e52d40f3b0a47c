"""The one configuration object, and the one place that defines each key and its default.

Every key of ``Config`` is also a command-line flag (``--state-dir``), an environment
variable (``SENDPOST_STATE_DIR``; the key is ``SENDPOST_API_KEY``) and a key of the YAML
file. Precedence: flag > environment > file > default (README.md, "Configuration").
Errors are raised as ``ConfigError`` naming the file, line and key at fault and how to
fix it; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from sendpost_agent.trust import MYNETWORKS, SASL
from sendpost_agent.trust import parse_item as parse_trust_item

DEFAULT_CONFIG_FILE = Path("/etc/sendpost-agent/config.yaml")
ENV_PREFIX = "SENDPOST_"


class ConfigError(Exception):
    """A configuration problem the operator must fix; the message says where and how."""


class Secret:
    """Holds the API key so that it never shows up in repr, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- value parsers: each takes what a flag, env var or YAML gave and returns the typed
# value, or raises ValueError with a message saying what is expected.


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _secret(value: object) -> Secret:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string (the Event Ingestion API key)")
    if any(c.isspace() or not c.isprintable() for c in value.strip()):
        raise ValueError("contains spaces or control characters; paste the key exactly")
    return Secret(value.strip())


def _mta(value: object) -> str:
    text = _text(value).lower()
    if text != "postfix":
        raise ValueError(f"{text!r} is not supported; the only supported MTA is 'postfix'")
    return text


def _url(value: object) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL, e.g. https://events.sendpost.io/...")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"{text!r} has a bad port: {exc}") from None
    return text


def _path(value: object) -> Path:
    return Path(_text(value))


def parse_host_port(value: object) -> HostPort:
    text = _text(value)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9113 or [::1]:9113")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return HostPort(host, port)


def _milter_socket(value: object) -> str:
    """Postfix notation: ``unix:/abs/path`` or ``inet:HOST:PORT``."""
    text = _text(value)
    kind, _, rest = text.partition(":")
    if kind in ("unix", "local") and rest.startswith("/"):
        return f"unix:{rest}"
    if kind == "inet":
        hp = parse_host_port(rest)
        return f"inet:{hp}"
    raise ValueError(
        f"{text!r} is not a milter socket; use unix:/absolute/path or inet:127.0.0.1:PORT"
    )


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Duration(float):
    """Seconds that print the way an operator writes them (``6d``, ``90s``)."""

    def __str__(self) -> str:
        for unit, size in sorted(_DURATION_UNITS.items(), key=lambda kv: -kv[1]):
            if self >= size and self % size == 0:
                return f"{int(self // size)}{unit}"
        return f"{float(self):g}s"


def _duration(value: object) -> Duration:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", _text(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration, e.g. 90s, 30m, 24h, 6d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError("must not be negative")
    return Duration(seconds)


def _retention(value: object) -> Duration:
    seconds = _duration(value)
    if seconds < 86400:
        raise ValueError("must be at least 24h (Postfix retries deferred mail for days)")
    return seconds


_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


class Size(int):
    """Bytes that print the way an operator writes them (``100MB``)."""

    def __str__(self) -> str:
        for unit in ("GB", "MB", "KB"):
            if self and self % _SIZE_UNITS[unit] == 0:
                return f"{self // _SIZE_UNITS[unit]}{unit}"
        return f"{int(self)}B"


def _size(value: object) -> Size:
    """Bytes, with an optional KB/MB/GB suffix (binary: 1 MB = 1 MiB)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"(\d+)\s*([KMG]?B?)", _text(value).upper())
        if not match:
            raise ValueError(f"{value!r} is not a size, e.g. 100MB or 512KB")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size < 64 * 1024:
        raise ValueError("must be at least 64KB")
    return Size(size)


def _positive_int(value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _timezone(value: object) -> str:
    """``local`` or an IANA zone name such as ``Europe/Berlin`` (checked, kept as text)."""
    text = _text(value)
    if text != "local":
        try:
            ZoneInfo(text)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{text!r} is not a known time zone; use 'local' or a name like Europe/Berlin"
            ) from None
    return text


def _log_source(value: object) -> str:
    text = _text(value).lower()
    if text not in ("file", "journal"):
        raise ValueError(f"{value!r} is not 'file' (log-path) or 'journal' (systemd journal)")
    return text


class JournalMatch(tuple[str, ...]):
    """``journal-match`` items (journalctl matches), printed the way an operator writes them."""

    def __str__(self) -> str:
        return " ".join(self)


def _journal_match(value: object) -> JournalMatch:
    """journalctl matches: FIELD=VALUE (fields in capitals), ``+`` between alternatives.
    A ``+`` with no match on one side is refused, as journalctl refuses it: logwatch
    adds this machine's ID to each alternative, and an empty one would read everything."""
    items = [_text(i) for i in value] if isinstance(value, list | tuple) else _text(value).split()
    for n, item in enumerate(items):
        if item == "+":
            if n in (0, len(items) - 1) or items[n - 1] == "+":
                raise ValueError(
                    f"'+' (or) stands between two matches, as in 'SYSLOG_FACILITY=2 +"
                    f" SYSLOG_IDENTIFIER=postfix/smtp'; remove the stray '+' of {' '.join(items)!r}"
                )
        elif not re.fullmatch(r"_{0,2}[A-Z0-9][A-Z0-9_]*=\S*", item):
            raise ValueError(
                f"{item!r} is not a journal match FIELD=VALUE (e.g. SYSLOG_FACILITY=2,"
                " _SYSTEMD_UNIT=postfix@-.service) nor '+' (or)"
            )
    return JournalMatch(items)


def _log_level(value: object) -> str:
    text = _text(value).upper()
    if text not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{value!r} is not one of debug, info, warning, error")
    return text


class TrustedClients(tuple[str, ...]):
    """``trusted-clients`` items, printed the way an operator writes them."""

    def __str__(self) -> str:
        return ", ".join(self) if self else "[]"


def _trusted_clients(value: object) -> TrustedClients:
    """A YAML list, or one string of items separated by commas or spaces (flag, env)."""
    if isinstance(value, list | tuple):
        items = [_text(item) for item in value]
    else:
        items = _text(value).replace(",", " ").split()
    return TrustedClients(dict.fromkeys(parse_trust_item(item) for item in items))


def _setting(
    default: Any,
    parse: Callable[[object], Any],
    help: str,
    env: str = "",
    default_env: str = "",
) -> Any:
    """A key: ``env`` overrides its ENV_PREFIX name; ``default_env`` replaces the default."""
    meta = {"parse": parse, "help": help, "env": env, "default_env": default_env}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """All settings of both processes; built only by ``load_config``."""

    api_key: Secret | None = _setting(
        None, _secret, "Event Ingestion API key, sent as X-SP-Event-ApiKey", "SENDPOST_API_KEY"
    )
    mta: str = _setting("postfix", _mta, "MTA type; only postfix is supported")
    endpoint: str = _setting(
        "https://events.sendpost.io/api/v1/tpsp/custom-smtp/events", _url, "ingestion URL"
    )
    log_path: Path = _setting(Path("/var/log/mail.log"), _path, "the mail log to follow")
    log_source: str = _setting(
        "file",
        _log_source,
        "where Postfix's log is read: file (log-path) or journal (the systemd journal,"
        " resumed at its cursor)",
    )
    journal_match: JournalMatch = _setting(
        JournalMatch(("SYSLOG_FACILITY=2",)),
        _journal_match,
        "with log-source journal: the entries read (journalctl matches; '+' means or);"
        " the default, the mail facility, holds every Postfix instance (postfix-out too)",
    )
    journal_directory: Path | None = _setting(
        None,
        _path,
        "with log-source journal: read the journal files in this directory instead of"
        " the system journal (journalctl --directory)",
    )
    state_dir: Path = _setting(
        Path("/var/lib/sendpost-agent"),
        _path,
        "shared map, pending.wal and cursor; both processes use the same one",
    )
    milter_socket: str = _setting(
        "unix:/var/spool/postfix/sendpost-agent/milter.sock",
        _milter_socket,
        "where the milter listens (Postfix notation); the default lies inside Debian's"
        " smtpd chroot, so main.cf names it unix:sendpost-agent/milter.sock",
    )
    milter_listen: HostPort = _setting(
        HostPort("127.0.0.1", 9114), parse_host_port, "address of the milter's /metrics"
    )
    listen: HostPort = _setting(
        HostPort("127.0.0.1", 9113), parse_host_port, "address of logwatch's /health and /metrics"
    )
    postfix_config_dir: Path = _setting(
        Path("/etc/postfix"),
        _path,
        "Postfix configuration read by doctor, for content filters and mynetworks"
        " (postconf -c DIR)",
        default_env="MAIL_CONFIG",
    )
    map_retention: Duration = _setting(
        Duration(6 * 86400),
        _retention,
        "how long a queue ID -> UUID row is kept (>= 24h; keep it above Postfix's"
        " maximal_queue_lifetime, 5d by default)",
    )
    report_deferred: bool = _setting(
        True, _bool, "also report deferrals (SendPost accepts but does not store them)"
    )
    join_wait: Duration = _setting(
        Duration(30),
        _duration,
        "how long (in log time) a status line waits for its UUID or a presumed"
        " content-filter hop waits for its new queue ID",
    )
    wal_max_size: Size = _setting(
        Size(100 * 1024**2), _size, "cap of pending.wal; when full, reading the log pauses"
    )
    max_requests_per_minute: int = _setting(
        10_000, _positive_int, "ceiling on POSTs to the API (its documented rate limit)"
    )
    log_timezone: str = _setting(
        "local", _timezone, "zone of log lines without an offset (Postfix's TZ): local or IANA"
    )
    trusted_clients: TrustedClients = _setting(
        TrustedClients((MYNETWORKS, SASL)),
        _trusted_clients,
        "SMTP clients whose X-Sendpost-Message-UUID header counts (any other's is counted"
        " and logged, never reported): mynetworks (Postfix's), sasl (any authenticated"
        " session), sasl:LOGIN, IP addresses and CIDR networks",
    )
    log_level: str = _setting("INFO", _log_level, "debug, info, warning or error")

    def require_api_key(self, why: str) -> Secret:
        if self.api_key is None:
            raise ConfigError(
                f"api-key is required {why}; set it with --api-key, SENDPOST_API_KEY"
                f" or 'api-key:' in {DEFAULT_CONFIG_FILE}"
            )
        return self.api_key

    @property
    def map_path(self) -> Path:
        return self.state_dir / "queuemap.sqlite3"

    @property
    def cursor_path(self) -> Path:
        return self.state_dir / "cursor"

    @property
    def wal_path(self) -> Path:
        return self.state_dir / "pending.wal"

    @property
    def dead_letter_path(self) -> Path:
        return self.state_dir / "dead-letter.jsonl"

    @property
    def tzinfo(self) -> tzinfo | None:
        """None means the system's local zone."""
        return None if self.log_timezone == "local" else ZoneInfo(self.log_timezone)


SETTINGS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Config)


def key_of(f: dataclasses.Field[Any]) -> str:
    return f.name.replace("_", "-")


def env_of(f: dataclasses.Field[Any]) -> str:
    return f.metadata["env"] or ENV_PREFIX + f.name.upper()


def _parse(f: dataclasses.Field[Any], value: object, where: str) -> Any:
    try:
        return f.metadata["parse"](value)
    except ValueError as exc:
        raise ConfigError(f"{where}: key '{key_of(f)}': {exc}") from None


def _read_file(path: Path) -> dict[str, tuple[object, int]]:
    """Return key -> (value, line) from a YAML mapping, with errors naming the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it or pass --config PATH"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot read config file (permission denied); run as a user that can"
            " read it (it holds the API key, so it is mode 0600)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters at once
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{path} line {line}: not valid YAML: unacceptable character U+{exc.character:04X}"
            " (YAML allows no control characters but tab and line breaks); delete it"
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError(
                f"{path} line {node.start_mark.line + 1}: expected 'key: value' lines"
            )
        out: dict[str, tuple[object, int]] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise ConfigError(f"{path} line {line}: key {key!r} is not a name")
            if key in out:
                raise ConfigError(f"{path} line {line}: key '{key}' is given twice")
            out[key] = (loader.construct_object(value_node, deep=True), line)
        return out
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()


def _unknown(key: str, where: str) -> ConfigError:
    known = [key_of(f) for f in SETTINGS]
    guess = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    hint = f"did you mean '{guess[0]}'?" if guess else "known keys: " + ", ".join(known)
    return ConfigError(f"{where}: unknown key '{key}'; {hint}")


def load_config(
    flags: Mapping[str, object] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config from flags (key -> value), environment, file and defaults.

    ``config_file`` None means the default file, which may be absent; a file named
    explicitly must exist.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    explicit = config_file is not None or bool(environ.get("SENDPOST_CONFIG"))
    path = config_file or Path(environ.get("SENDPOST_CONFIG") or DEFAULT_CONFIG_FILE)
    from_file: dict[str, tuple[object, int]] = {}
    if explicit or path.exists():
        from_file = _read_file(path)
    by_key = {key_of(f): f for f in SETTINGS}
    for key, (_, line) in from_file.items():
        if key not in by_key:
            raise _unknown(key, f"{path} line {line}")
    values: dict[str, Any] = {}
    for f in SETTINGS:
        key = key_of(f)
        if key in flags:
            values[f.name] = _parse(f, flags[key], f"flag --{key}")
        elif env_of(f) in environ:
            values[f.name] = _parse(f, environ[env_of(f)], f"environment {env_of(f)}")
        elif key in from_file:
            value, line = from_file[key]
            values[f.name] = _parse(f, value, f"{path} line {line}")
        elif environ.get(f.metadata["default_env"]):
            name = f.metadata["default_env"]
            values[f.name] = _parse(f, environ[name], f"environment {name}")
    return Config(**values)


def reference_table() -> str:
    """The README's configuration table, generated from this module."""
    rows = ["| key | environment | default | meaning |", "| --- | --- | --- | --- |"]
    defaults = describe(Config())
    for f in SETTINGS:
        key = key_of(f)
        default = defaults[key]
        if f.metadata["default_env"]:
            default += f" (or ${f.metadata['default_env']})"
        rows.append(f"| `{key}` | `{env_of(f)}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


def describe(config: Config) -> dict[str, str]:
    """Key -> printable value, with the API key masked; for `status`, doctor and logs."""
    out = {}
    for f in SETTINGS:
        value = getattr(config, f.name)
        if isinstance(value, Secret):
            value = "(set)"
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif value is None:
            value = "(not set)"
        out[key_of(f)] = str(value)
    return out


if __name__ == "__main__":
    print(reference_table(), end="")
