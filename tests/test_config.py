"""Configuration: precedence, defaults, and errors that name the key/file/line and fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sendpost_agent.config import Config, ConfigError, HostPort, Secret, describe, load_config

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.unit
def test_defaults_match_the_spec(tmp_path: Path) -> None:
    config = load_config({}, None, {"SENDPOST_CONFIG": str(write(tmp_path, ""))})
    assert config.api_key is None
    assert config.mta == "postfix"
    assert config.endpoint == "https://events.sendpost.io/api/v1/tpsp/custom-smtp/events"
    assert config.log_path == Path("/var/log/mail.log")
    assert config.state_dir == Path("/var/lib/sendpost-agent")
    assert config.listen == HostPort("127.0.0.1", 9113)
    assert config.postfix_config_dir == Path("/etc/postfix")
    assert config.map_retention >= 86400


@pytest.mark.unit
def test_seed_example_file_is_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
api-key: "your-event-ingestion-api-key"
mta: postfix
endpoint: "https://events.sendpost.io/api/v1/tpsp/custom-smtp/events"
log-path: "/var/log/mail.log"
""",
    )
    config = load_config({}, path, NO_ENV)
    assert config.api_key == Secret("your-event-ingestion-api-key")
    assert config.log_path == Path("/var/log/mail.log")


@pytest.mark.unit
def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = write(tmp_path, "api-key: from-file\nlog-path: /file.log\nstate-dir: /file-state\n")
    env = {"SENDPOST_API_KEY": "from-env", "SENDPOST_LOG_PATH": "/env.log"}
    config = load_config({"log-path": "/flag.log"}, path, env)
    assert config.log_path == Path("/flag.log")
    assert config.api_key is not None and config.api_key.reveal() == "from-env"
    assert config.state_dir == Path("/file-state")
    assert config.mta == "postfix"


@pytest.mark.unit
def test_mail_config_is_the_default_postfix_dir_but_file_wins(tmp_path: Path) -> None:
    empty = write(tmp_path, "")
    assert load_config({}, empty, {"MAIL_CONFIG": "/etc/postfix-out"}).postfix_config_dir == Path(
        "/etc/postfix-out"
    )
    path = write(tmp_path, "postfix-config-dir: /etc/postfix-in\n")
    assert load_config({}, path, {"MAIL_CONFIG": "/etc/postfix-out"}).postfix_config_dir == Path(
        "/etc/postfix-in"
    )


@pytest.mark.unit
def test_missing_default_file_is_fine_but_missing_named_file_is_not(tmp_path: Path) -> None:
    load_config({}, None, NO_ENV)  # /etc/sendpost-agent/config.yaml absent on test hosts
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config({}, tmp_path / "nope.yaml", NO_ENV)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mta: postfix\napi_key: x\n", r"line 2: unknown key 'api_key'; did you mean 'api-key'"),
        ("mta: exim\n", r"line 1: key 'mta': 'exim' is not supported.*'postfix'"),
        ("endpoint: ftp://x/y\n", r"line 1: key 'endpoint': 'ftp://x/y' is not an http\(s\) URL"),
        ("endpoint: https://host:99999/\n", r"key 'endpoint'.*bad port"),
        ("listen: 9113\n", r"line 1: key 'listen': '9113' is not HOST:PORT"),
        ("listen: [1, 2]\n", r"key 'listen': expected a string, got list"),
        ("milter-socket: /tmp/x.sock\n", r"key 'milter-socket'.*unix:/absolute/path"),
        ("map-retention: 1h\n", r"key 'map-retention': must be at least 24h"),
        ("log-path: ''\n", r"key 'log-path': must not be empty"),
        ("mta: postfix\nmta: postfix\n", r"line 2: key 'mta' is given twice"),
        ("mta: [postfix\n", r"not valid YAML"),
        ("- mta\n", r"line 1: expected 'key: value' lines"),
    ],
)
def test_bad_file_names_the_line_key_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config({}, path, NO_ENV)
    assert str(path) in str(info.value)


@pytest.mark.unit
def test_value_forms_are_normalised(tmp_path: Path) -> None:
    config = load_config(
        {"milter-socket": "inet:[::1]:8893", "map-retention": "2d", "listen": "[::1]:9"},
        None,
        NO_ENV,
    )
    assert config.milter_socket == "inet:[::1]:8893"
    assert config.map_retention == 2 * 86400
    assert config.listen == HostPort("::1", 9)
    assert load_config({"mta": "Postfix"}, None, NO_ENV).mta == "postfix"


@pytest.mark.unit
def test_bad_flag_and_env_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"flag --listen"):
        load_config({"listen": "nowhere"}, None, NO_ENV)
    with pytest.raises(ConfigError, match=r"environment SENDPOST_MTA"):
        load_config({}, None, {"SENDPOST_MTA": "sendmail"})


@pytest.mark.unit
def test_api_key_never_shows(tmp_path: Path) -> None:
    config = load_config({"api-key": "sk-very-secret"}, None, NO_ENV)
    assert "sk-very-secret" not in repr(config)
    assert "sk-very-secret" not in str(config)
    assert "sk-very-secret" not in str(describe(config))
    with pytest.raises(ConfigError) as info:
        load_config({"api-key": "sk very secret"}, None, NO_ENV)
    assert "secret" not in str(info.value)


@pytest.mark.unit
def test_require_api_key_explains_where_to_set_it() -> None:
    with pytest.raises(ConfigError, match=r"api-key is required.*SENDPOST_API_KEY"):
        Config().require_api_key("to ship events")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sendpost_agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.integration
def test_cli_exits_2_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "api-key: sk-hidden\nmta: exim\n")
    result = run_cli("--config", str(path), "milter")
    assert result.returncode == 2
    assert f"{path} line 2: key 'mta'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-hidden" not in result.stderr + result.stdout


@pytest.mark.integration
def test_cli_unreadable_file_exits_2(tmp_path: Path) -> None:
    # A directory is unreadable as a file for root too (CI runs as root).
    result = run_cli("milter", "--config", str(tmp_path))
    assert result.returncode == 2
    assert f"{tmp_path}: cannot read config file" in result.stderr


@pytest.mark.integration
def test_cli_unknown_command_and_flag_exit_2() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("milter", "--no-such-flag").returncode == 2


@pytest.mark.integration
def test_cli_control_character_in_file_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    """YAML's reader refuses the file before parsing; that once escaped as a traceback."""
    path = write(tmp_path, "mta: postfix\nlog-path: /var/log/mail\x01.log\n")
    result = run_cli("--config", str(path), "status")
    assert result.returncode == 2
    assert (
        f"configuration error: {path} line 2: not valid YAML: unacceptable character"
        " U+0001" in result.stderr
    )
    assert "delete it" in result.stderr
    assert "Traceback" not in result.stderr
