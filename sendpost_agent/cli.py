"""``sendpost-agent [--config PATH] COMMAND [OPTIONS]`` (README.md, "Command line").

Exit codes: 0 clean stop, 2 bad configuration or usage, 1 any other failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from sendpost_agent import __version__
from sendpost_agent.config import (
    DEFAULT_CONFIG_FILE,
    SETTINGS,
    Config,
    ConfigError,
    HostPort,
    env_of,
    key_of,
    load_config,
    parse_host_port,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _run_milter(config: Config, args: argparse.Namespace) -> int:
    from sendpost_milter.server import MilterStartError, run

    try:
        return run(config)
    except MilterStartError as exc:
        logging.getLogger("sendpost_milter").error("%s", exc)
        return EXIT_FAILURE


def _run_logwatch(config: Config, args: argparse.Namespace) -> int:
    from logwatch.agent import run_logwatch

    return run_logwatch(config)


def _run_status(config: Config, args: argparse.Namespace) -> int:
    from logwatch.status import status

    return status(config, sys.stdout)


def _run_replay(config: Config, args: argparse.Namespace) -> int:
    from logwatch.journal import journal_time
    from logwatch.pipeline import tune_gc
    from logwatch.replay import JournalSpan, replay

    if not args.files and not args.journal:
        raise ConfigError("replay: name mail log files, or --journal to read the systemd journal")
    if not args.journal and (args.since or args.until):
        raise ConfigError("replay: --since and --until apply to --journal only")
    tune_gc()  # process-wide: here, not in replay(), which tests call in-process
    journal = None
    if args.journal:
        try:
            since, until = (
                None if a is None else journal_time(a) for a in (args.since, args.until)
            )
        except ValueError as exc:
            raise ConfigError(f"replay --since/--until: {exc}") from None
        journal = JournalSpan(since, until)
    return replay(config, args.files, send=args.send, journal=journal)


def _run_doctor(config: Config, args: argparse.Namespace) -> int:
    from sendpost_agent.doctor import run_doctor

    return run_doctor(config, sys.stdout, smtp=args.smtp, offline=args.offline, as_json=args.json)


def _smtp_address(text: str) -> HostPort:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _doctor_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--offline", action="store_true", help="skip the endpoint check")
    parser.add_argument(
        "--smtp",
        type=_smtp_address,
        metavar="HOST:PORT",
        help="the smtpd to send the probe to [default: the smtpd listener"
        " of master.cf that passes mail to the milter, port 25 first]",
    )


def _replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="mail log files, plain or .gz, oldest first",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="read the systemd journal (journal-match, journal-directory) after the files",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="with --journal: from this time ('2026-11-23 18:00', local; -2h; @UNIXTIME; today)",
    )
    parser.add_argument(
        "--until", metavar="TIME", help="with --journal: up to this time (the same forms)"
    )
    parser.add_argument(
        "--send",
        action="store_true",
        help="ship the events to the endpoint instead of printing them",
    )


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


Handler = Callable[[Config, argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Handler, Callable[[argparse.ArgumentParser], None]]] = {
    "milter": ("run the milter in the foreground until SIGTERM", _run_milter, _no_args),
    "logwatch": (
        "run the log watcher, the shipper and the health/metrics server in the"
        " foreground until SIGTERM",
        _run_logwatch,
        _no_args,
    ),
    "replay": (
        "read mail log files from their start, join and classify exactly as logwatch"
        " does, and print one JSON event per line",
        _run_replay,
        _replay_args,
    ),
    "doctor": (
        "check the Postfix configuration and the live path (milter sees the header, mail"
        " log, endpoint and key) and print a verdict per check; exit 0 all pass, 1 a check"
        " failed, 2 doctor could not run",
        _run_doctor,
        _doctor_args,
    ),
    "status": (
        "a short summary of the running logwatch (lag, pending events, last send, last"
        " error); exit 1 when it is unhealthy or not running",
        _run_status,
        _no_args,
    ),
}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (flag > environment > file > default)")
    for f in SETTINGS:
        default = "required where needed" if f.default is None else f.default
        group.add_argument(
            f"--{key_of(f)}",
            dest=f"setting:{key_of(f)}",
            metavar=key_of(f).split("-")[-1].upper(),
            default=argparse.SUPPRESS,
            help=f"{f.metadata['help']} [env {env_of(f)}; default {default}]",
        )


# setup and teardown write the config file the other commands read: they take their own
# flags (sendpost_agent/hostsetup.py), not the configuration object.
SETUP_KEYS = ("mta", "endpoint", "log-path", "log-source", "postfix-config-dir", "state-dir")
HOST_COMMANDS = {
    "setup": "wire the installed agent into this host: user and directories, config.yaml"
    " (0600; the key is never printed), the services, the milter and the header_checks INFO"
    " fallback in Postfix (main.cf backed up, postfix reload), then doctor; idempotent."
    " Exit 0 done, 1 a step failed, 2 bad usage",
    "teardown": "undo setup: remove our entries from Postfix (reload), stop and disable the"
    " services; --purge also removes state-dir, the config directory and the user",
}
HOST_ENVIRONMENT = """environment:
  SENDPOST_API_KEY   the API key (setup), instead of --api-key, which ps would show
  SYSTEMD_DIR        where setup's unit drop-ins go [/etc/systemd/system]
  SENDPOST_SYSTEMD   auto, yes or no: is systemd running? [auto: /run/systemd/system]"""


def _host_args(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="print each change it would make, make none"
    )
    parser.add_argument("--verbose", action="store_true", help="show the output of each command")
    by_key = {key_of(f): f for f in SETTINGS}
    keys = SETUP_KEYS if name == "setup" else ("postfix-config-dir",)
    where = "written to config.yaml" if name == "setup" else "default: config.yaml's"
    for key in keys:
        parser.add_argument(
            f"--{key}",
            dest=f"setting:{key}",
            metavar=key.split("-")[-1].upper(),
            default=argparse.SUPPRESS,
            help=f"{by_key[key].metadata['help']} ({where})",
        )
    if name == "setup":
        given = parser.add_mutually_exclusive_group()
        given.add_argument("--api-key", metavar="KEY", help="the Event Ingestion API key")
        given.add_argument(
            "--api-key-stdin", action="store_true", help="read the API key from standard input"
        )
        parser.add_argument(
            "--restart",
            action="store_true",
            help="restart the running services (the code or the units changed)",
        )
        parser.add_argument(
            "--with-rsyslog",
            action="store_true",
            help="when no syslog daemon writes a mail log, install rsyslog (which writes"
            " one) instead of reading the systemd journal",
        )
    else:
        parser.add_argument(
            "--purge", action="store_true", help="also remove state-dir, config and the user"
        )


def _run_host_command(args: argparse.Namespace) -> int:
    from sendpost_agent.hostsetup import Host, Request, UsageError, main

    # The key goes to config.yaml only: never to a child process's environment.
    api_key = os.environ.pop("SENDPOST_API_KEY", None)
    if getattr(args, "api_key_stdin", False):
        api_key = sys.stdin.readline().strip()
    api_key = getattr(args, "api_key", None) or api_key
    config = getattr(args, "config", None) or Path(
        os.environ.get("SENDPOST_CONFIG") or DEFAULT_CONFIG_FILE
    )
    # The printed commands run this very program (a virtualenv's, or /usr/bin's).
    program = "sendpost-agent"
    if Path(sys.argv[0]).name == program:
        program = os.path.abspath(sys.argv[0])
    settings = {
        name.removeprefix("setting:"): value
        for name, value in vars(args).items()
        if name.startswith("setting:")
    }
    request = Request(
        api_key=api_key,
        settings=settings,
        dry_run=args.dry_run,
        verbose=args.verbose,
        restart=getattr(args, "restart", False),
        with_rsyslog=getattr(args, "with_rsyslog", False),
        purge=getattr(args, "purge", False),
    )
    try:
        host = Host.from_environ(config, program, os.environ)
    except UsageError as exc:
        print(f"sendpost-agent {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.dry_run and os.geteuid() != 0:
        print(
            f"sendpost-agent {args.command}: error: run it as root (or try --dry-run)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return main(args.command, host, request)


def _config_after_command(parser: argparse.ArgumentParser) -> None:
    """``--config`` also after the command name (undocumented there)."""
    parser.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, metavar="PATH", help=argparse.SUPPRESS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sendpost-agent",
        description="Reports the final fate of SendPost messages from a Postfix server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="YAML config file [default /etc/sendpost-agent/config.yaml]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _, add_args) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        add_args(cmd)
        _config_after_command(cmd)
        _add_setting_flags(cmd)
    for name, help_text in HOST_COMMANDS.items():
        cmd = sub.add_parser(
            name,
            help=help_text,
            description=textwrap.fill(help_text, 88),
            epilog=HOST_ENVIRONMENT,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _config_after_command(cmd)
        _host_args(name, cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in HOST_COMMANDS:
        return _run_host_command(args)
    flags = {
        name.removeprefix("setting:"): value
        for name, value in vars(args).items()
        if name.startswith("setting:")
    }
    try:
        config = load_config(flags, getattr(args, "config", None))
    except ConfigError as exc:
        print(f"sendpost-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    _, handler, _ = COMMANDS[args.command]
    try:
        return handler(config, args)
    except ConfigError as exc:
        print(f"sendpost-agent: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
