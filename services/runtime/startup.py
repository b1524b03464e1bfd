"""What a service that cannot start says, and the status it exits with.

A start that fails ends in one structured log line, `cannot start`, with the service, the
setting at fault (`setting`) and, where there is one, the address it could not reach or bind
(`address`), the kind of failure and what went wrong (`error`), then an exit:

- status 2 for a configuration error (a missing or malformed setting, a certificate file that
  is unusable, a port already taken): restarting changes nothing until the setting does;
- status 1 for a dependency that cannot be reached (the database): a restart may succeed once
  it is back, which is what Kubernetes' back-off does.

No traceback: the line says what to change. A failure nobody foresaw (a bug) is the one
exception, logged with its traceback, which is then what is needed. Secrets stay out of the
line: DSNs are shown masked, and a database driver's message is cleared of the password.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from services.runtime.errors import TiergenError, Unavailable
from services.runtime.migrations import redact
from services.runtime.settings import ConfigError

__all__ = [
    "CONFIGURATION_EXIT",
    "UNREACHABLE_EXIT",
    "DependencyUnreachable",
    "NotStarted",
    "StartFailure",
    "cannot_listen",
    "database",
    "describe",
    "dsn_setting",
    "report",
]

#: Exit status of a start refused by its configuration (documented in docs/configuration.md).
CONFIGURATION_EXIT = 2
#: Exit status of a start that could not reach a dependency, or failed otherwise.
UNREACHABLE_EXIT = 1

_log = structlog.get_logger("tiergen.server")

#: A message that begins with the variable it is about: `TIERGEN_X=value: ...`, `TIERGEN_X: ...`.
_LEADING_SETTING = re.compile(r"^([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?=[=:\s]|$)")
#: A variable named anywhere in a message, for those that do not begin with one.
_ANY_SETTING = re.compile(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])\b")
#: The address of a listening failure: `cannot listen on HOST:PORT: ...`.
_LISTEN_ADDRESS = re.compile(r"cannot listen on (\S+?):? ")
#: How long the second look at an unreachable database may take, to learn why.
_PROBE_SECONDS = 3


class DependencyUnreachable(Exception):
    """A service could not reach what `setting` names at start; the message is the cause."""

    def __init__(self, setting: str, address: str, error: str) -> None:
        super().__init__(error)
        self.setting = setting
        self.address = address
        self.error = error


class NotStarted(Exception):
    """A start ended by `cause`, on its way from the event loop to the process's exit."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True)
class StartFailure:
    """The one line a failed start logs, and the status its process exits with."""

    kind: str
    error: str
    exit_status: int
    setting: str | None = None
    address: str | None = None
    #: A failure nobody foresaw: its traceback goes with the line.
    unexpected: bool = False

    def fields(self) -> dict[str, Any]:
        """The line's fields beside its event, without those that are unknown."""
        found = {"kind": self.kind, "setting": self.setting, "address": self.address}
        return {name: value for name, value in found.items() if value is not None} | {
            "error": self.error
        }


def describe(error: BaseException) -> StartFailure:
    """What `error`, ending a start, says: kind, setting or address at fault, exit status."""
    if isinstance(error, DependencyUnreachable):
        return StartFailure(
            "dependency unreachable",
            error.error,
            UNREACHABLE_EXIT,
            setting=error.setting,
            address=error.address,
        )
    if isinstance(error, ConfigError):
        message = str(error)
        leading = _LEADING_SETTING.match(message)
        anywhere = _ANY_SETTING.search(message)
        listen = _LISTEN_ADDRESS.search(message)
        setting = leading or anywhere
        return StartFailure(
            "configuration error",
            message,
            CONFIGURATION_EXIT,
            setting=setting.group(1) if setting else None,
            address=listen.group(1) if listen else None,
        )
    if isinstance(error, TiergenError):
        return StartFailure(
            "dependency unreachable" if isinstance(error, Unavailable) else "start failed",
            error.message,
            UNREACHABLE_EXIT,
        )
    if isinstance(error, OSError):
        return StartFailure("start failed", str(error), UNREACHABLE_EXIT)
    return StartFailure(
        "start failed", f"{type(error).__name__}: {error}", UNREACHABLE_EXIT, unexpected=True
    )


def report(service: str, error: BaseException) -> int:
    """Logs the one `cannot start` line of `error` and returns the status to exit with."""
    failure = describe(error)
    if failure.unexpected:
        _log.error("cannot start", service=service, exc_info=error, **failure.fields())
    else:
        _log.error("cannot start", service=service, **failure.fields())
    return failure.exit_status


def cannot_listen(host: str, port: int) -> ConfigError | None:
    """Why the gRPC port cannot be had on `host`, named by its setting (TIERGEN_PORT when it is
    taken, TIERGEN_HOST when the host is no address of this machine); None when it can, or
    when `port` is 0 (any free port).

    gRPC says only that it failed to bind, and writes its own line to stderr beside ours; a
    socket bound and closed first, as gRPC would bind it, tells why and keeps that line away.
    """
    if port == 0:
        return None
    bare = host.removeprefix("[").removesuffix("]")
    address = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    try:
        candidates = socket.getaddrinfo(
            bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return ConfigError(f"TIERGEN_HOST={host}: cannot listen on {address}: {error.strerror}")
    failure: OSError | None = None
    for family, kind, protocol, _name, where in candidates:
        with socket.socket(family, kind, protocol) as probe:
            # As gRPC does: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as error:
                failure = error
                continue
        return None
    if failure is None:
        return None
    setting = (
        f"TIERGEN_PORT={port}" if failure.errno == errno.EADDRINUSE else f"TIERGEN_HOST={host}"
    )
    return ConfigError(f"{setting}: cannot listen on {address}: {failure.strerror}")


def dsn_setting(environ: Mapping[str, str], variable: str) -> str:
    """The variable a DSN came from: `variable`, or `variable`_FILE when that is what is set."""
    file_variable = f"{variable}_FILE"
    return file_variable if (environ.get(file_variable) or "").strip() else variable


@contextmanager
def database(setting: str, dsn: str) -> Iterator[None]:
    """Within it, a database found unreachable (Unavailable) is raised as DependencyUnreachable
    naming `setting`, the database's host and port, and why it could not be reached.

    The stores' pools retry until their timeout and then say only that they gave up; one more
    connection attempt, made only then, brings back the driver's own words (refused, unknown
    host, password authentication failed, no such database). When that attempt succeeds, the
    Unavailable was about something else (an object store) and goes on as it is.
    """
    try:
        yield
    except Unavailable as error:
        cause = _probe(dsn)
        if cause is None:
            raise  # the database answers: something else was out of reach
        raise DependencyUnreachable(setting, _address(dsn), f"{error.message}: {cause}") from None


def _address(dsn: str) -> str:
    """Where `dsn` points, with nothing secret: `host:port`, a socket directory or a file."""
    if dsn.startswith("sqlite:"):
        return dsn
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact(dsn)
    host = str(parts.get("host") or parts.get("hostaddr") or "local socket")
    port = str(parts.get("port") or "5432")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe(dsn: str) -> str | None:
    """Why a connection to `dsn` fails now, in one line without the password; None when it
    does not fail (the database came back) or is no PostgreSQL DSN."""
    if dsn.startswith("sqlite:"):
        return None
    try:
        password = str(conninfo_to_dict(dsn).get("password") or "")
    except psycopg.Error:
        return None  # the parser's complaint may quote the DSN, password and all
    try:
        with psycopg.connect(dsn, connect_timeout=_PROBE_SECONDS):
            return None
    except Exception as error:  # whatever stops a connection is the cause to report
        text = " ".join(str(error).split()) or type(error).__name__
        return text.replace(password, "***") if password else text
