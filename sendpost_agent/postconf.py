"""Postfix's configuration as Postfix itself reads it: ``postconf -c DIR`` and ``postmap -q``.

Parsing main.cf and master.cf by hand would miss ``$name`` expansion, defaults, folded
lines and ``-o { name = value }`` overrides; asking Postfix's own tools does not. Every
call has a timeout, and a failure raises ``PostconfError`` saying what to fix.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT = 10.0
# postconf and postmap live in sbin, often not in a non-root PATH.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class PostconfError(Exception):
    """Postfix's configuration cannot be read; the message names the command and the fix."""


def split_list(value: str) -> list[str]:
    """Items of a Postfix list (commas or whitespace); a ``{...}`` group stays one item.

    Groups are per-milter settings (``{ inet:host:port, default_action=accept }``) and
    inline tables (``regexp:{ {/x/ IGNORE} }``).
    """
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in value:
        if depth == 0 and (char == "," or char.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        depth += (char == "{") - (char == "}")
        current.append(char)
    if current:
        items.append("".join(current))
    return items


@dataclass(frozen=True)
class Service:
    """One master.cf service, with its ``-o`` overrides ($names expanded)."""

    name: str  # "smtp", "127.0.0.1:10025", "smtp-amavis"
    type: str  # inet, unix, pass, ...
    chroot: bool
    command: str  # "smtpd", "postscreen", "cleanup", ...
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.name}/{self.type}"


class PostfixConfig:
    """One Postfix configuration directory, read lazily and cached."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self._settings: dict[str, str] = {}
        self._services: list[Service] | None = None

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a Postfix tool on this config dir; exit code 1 is left to the caller."""
        if not (self.config_dir / "main.cf").is_file():  # the tools would sleep 1 s, then fail
            raise PostconfError(f"open {self.config_dir / 'main.cf'}: No such file or directory")
        path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
        binary = shutil.which(tool, path=path)
        if binary is None:
            raise PostconfError(
                f"{tool} not found in PATH or {', '.join(_SBIN)}: is Postfix"
                " installed? (apt-get install postfix)"
            )
        command = [binary, "-c", str(self.config_dir), *args]
        try:
            proc = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostconfError(f"{' '.join(command)}: {exc}") from None
        fatal = re.search(r"fatal: (.*)", proc.stderr)
        if fatal or proc.returncode not in (0, 1):
            problem = fatal.group(1) if fatal else proc.stderr.strip() or f"exit {proc.returncode}"
            raise PostconfError(f"{' '.join(command)}: {problem}")
        return proc

    def get(self, *names: str) -> dict[str, str]:
        """main.cf values (defaults included, $names expanded); unknown names give ""."""
        missing = [n for n in names if n not in self._settings]
        if missing:
            out = self.run("postconf", "-x", *missing).stdout
            for line in out.splitlines():
                name, _, value = line.partition(" =")
                self._settings[name] = value.strip()
            for name in missing:
                self._settings.setdefault(name, "")
        return {n: self._settings[n] for n in names}

    def value(self, name: str) -> str:
        return self.get(name)[name]

    def services(self) -> list[Service]:
        """master.cf services in file order (``postconf -M`` and ``postconf -P -x``)."""
        if self._services is None:
            overrides: dict[str, dict[str, str]] = {}
            for line in self.run("postconf", "-P", "-x").stdout.splitlines():
                key, _, value = line.partition(" =")
                service, _, name = key.rpartition("/")
                overrides.setdefault(service, {})[name] = value.strip()
            services = []
            for line in self.run("postconf", "-M").stdout.splitlines():
                fields = line.split(maxsplit=7)
                if len(fields) < 8:
                    continue
                name, kind, _, _, chroot, _, _, command = fields
                services.append(
                    Service(
                        name,
                        kind,
                        chroot == "y",
                        command.split()[0],
                        overrides.get(f"{name}/{kind}", {}),
                    )
                )
            self._services = services
        return self._services

    def effective(self, service: Service, name: str) -> str:
        """The value ``service`` runs with: its ``-o`` override, else main.cf's."""
        if name in service.overrides:
            return service.overrides[name]
        return self.value(name)

    def origin(self, service: Service | None, name: str) -> str:
        """Where ``name`` is set for ``service``: master.cf -o, main.cf line, or default."""
        if service is not None and name in service.overrides:
            return f"{self.config_dir / 'master.cf'} service {service} (-o {name})"
        main_cf = self.config_dir / "main.cf"
        try:
            lines = main_cf.read_text(errors="replace").splitlines()
        except OSError:
            return f"{name} in {main_cf}"
        setting = re.compile(rf"{re.escape(name)}\s*=")
        numbers = [i for i, line in enumerate(lines, 1) if setting.match(line)]
        if not numbers:  # Postfix uses the last setting of a name
            return f"{name} (Postfix's default, not set in {main_cf})"
        return f"{main_cf} line {numbers[-1]} ({name})"

    def query(self, table: str, key: str) -> str | None:
        """``postmap -q KEY TABLE``: the table's answer, None when nothing matches."""
        proc = self.run("postmap", "-q", key, table)
        return proc.stdout.strip() if proc.returncode == 0 else None
