"""The API key the `tiergen` command sends, the TLS it calls with, and the development key
`tiergen up` makes for it.

A command that calls the router takes its key from `--api-key`, else from `TIERGEN_API_KEY` (or
the file `TIERGEN_API_KEY_FILE` names), else, when it is pointed at a data directory
(`--data-dir`), from that directory's `dev-api-key`: the key of tenant `dev`, with every scope,
that the first `tiergen up` of the directory made. A key is never printed, logged or put in an
error; it is named by its prefix.

A command calls over TLS, trusting `--ca-file` (else TIERGEN_CA_FILE, else the `tls/ca.crt` of
`--data-dir`, else the system's trust store) and presenting the client certificate of
`--cert-file`/`--key-file` (else TIERGEN_TLS_CERT_FILE/KEY, else the data directory's
`tls/cli.crt`, the operator's, else none). `--insecure` (or TIERGEN_INSECURE=true) calls in
plaintext, for a router behind a mesh, and says so on stderr every time.

The dev key file is created with mode 0600 from its first byte (opened with that mode, written,
then renamed over the old one), so it is never readable by others, not even for a moment, and a
crash never leaves half a key behind. The cost is a stray temporary file after such a crash,
which the next start overwrites.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from services.cli.pki import CLI_NAME, TLS_DIR, LocalPki
from services.router.access.keys import KeyStore
from services.router.access.scopes import Scope
from services.runtime.credentials import BearerToken
from services.runtime.settings import (
    CA_FILE_VARIABLE,
    CERT_FILE_VARIABLE,
    INSECURE_VARIABLE,
    KEY_FILE_VARIABLE,
    ChannelSecurity,
    ConfigError,
    Env,
    PemFile,
)

__all__ = [
    "API_KEY_VARIABLE",
    "DEV_KEY_FILE",
    "DEV_TENANT",
    "CredentialError",
    "DevKey",
    "add_transport_arguments",
    "provision_dev_key",
    "resolve_api_key",
    "resolve_security",
]

API_KEY_VARIABLE = "TIERGEN_API_KEY"
#: The file of a data directory holding its dev key.
DEV_KEY_FILE = "dev-api-key"
#: The tenant of the embedded default.
DEV_TENANT = "dev"


class CredentialError(RuntimeError):
    """No usable API key: the message says where one would come from, never what it is."""


def resolve_api_key(given: str | None, data_dir: Path | None) -> BearerToken:
    """The key a command sends: `given` (`--api-key`), TIERGEN_API_KEY (or the file
    TIERGEN_API_KEY_FILE names), or the dev key of `data_dir`; CredentialError when there is
    none or it is malformed."""
    # An exported but empty variable is read as unset, as shells and most tools do.
    try:
        from_environ = Env(os.environ).secret(API_KEY_VARIABLE)
    except ConfigError as error:
        raise CredentialError(str(error)) from None
    for source, text in (("--api-key", given), (API_KEY_VARIABLE, from_environ)):
        if text is not None:
            try:
                return BearerToken(text)
            except ValueError as error:
                raise CredentialError(f"the API key of {source} is malformed: {error}") from None
    if data_dir is None:
        raise CredentialError(
            f"no API key: pass --api-key KEY, set {API_KEY_VARIABLE}, or give --data-dir DIR"
            f" of a `tiergen up` to use its {DEV_KEY_FILE}"
        )
    path = data_dir / DEV_KEY_FILE
    try:
        return BearerToken.from_file(path)
    except FileNotFoundError:
        raise CredentialError(
            f"no API key at {path}: `tiergen up --data-dir {data_dir}` makes one on its first"
            f" start; or pass --api-key KEY or set {API_KEY_VARIABLE}"
        ) from None
    except OSError as error:
        raise CredentialError(f"cannot read the API key at {path}: {error.strerror}") from None
    except ValueError as error:
        raise CredentialError(f"the API key at {path} is malformed: {error}") from None


def add_transport_arguments(parser: argparse.ArgumentParser, context: str = "") -> None:
    """The options of how a command calls: --ca-file, --cert-file, --key-file, --insecure."""
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help=f"{context}trust servers whose certificate this CA signed (env {CA_FILE_VARIABLE};"
        " default: the tls/ca.crt of --data-dir, else the system's trust store)",
    )
    parser.add_argument(
        "--cert-file",
        type=Path,
        metavar="FILE",
        help=f"{context}the client certificate to present (env {CERT_FILE_VARIABLE}; default:"
        " the tls/cli.crt of --data-dir, the operator's, else none)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        metavar="FILE",
        help=f"{context}the client certificate's key (env {KEY_FILE_VARIABLE})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help=f"{context}call in plaintext, without TLS: only through a mesh that encrypts the"
        f" hop (env {INSECURE_VARIABLE}=true)",
    )


def resolve_security(
    *,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    insecure: bool = False,
    data_dir: Path | None = None,
) -> ChannelSecurity:
    """How a command calls: the options, else the environment, else `data_dir`'s certificates
    (see the module's docstring); CredentialError when they contradict each other."""
    try:
        env_insecure = Env(os.environ).flag(INSECURE_VARIABLE, False)
    except ConfigError as error:
        raise CredentialError(str(error)) from None
    if insecure or env_insecure:
        given = [name for name, value in (("--ca-file", ca_file), ("--cert-file", cert_file),
                 ("--key-file", key_file)) if value is not None]  # fmt: skip
        if given:
            raise CredentialError(
                f"{'--insecure' if insecure else INSECURE_VARIABLE + '=true'} calls in plaintext,"
                f" yet {', '.join(given)} asks for TLS: choose one"
            )
        print(
            "tiergen: PLAINTEXT: calling without TLS (--insecure); nothing is encrypted or checked",
            file=sys.stderr,
        )
        return ChannelSecurity.plaintext()
    pki = None if data_dir is None else LocalPki(data_dir / TLS_DIR)

    def chosen(
        option: str, given: Path | None, variable: str, local: Path | None
    ) -> PemFile | None:
        if given is not None:
            return PemFile(given.expanduser(), option)
        from_environ = os.environ.get(variable) or None
        if from_environ is not None:
            return PemFile(Path(from_environ).expanduser(), variable)
        if local is not None:
            if not local.is_file():
                raise CredentialError(
                    f"no {local.name} in {local.parent}: `tiergen up --data-dir {data_dir}` makes"
                    " the data directory's certificates on its start"
                )
            return PemFile(local, "--data-dir")
        return None

    ca = chosen("--ca-file", ca_file, CA_FILE_VARIABLE, pki.ca_file if pki else None)
    pair_given = cert_file is not None or key_file is not None
    pair_in_env = bool(os.environ.get(CERT_FILE_VARIABLE) or os.environ.get(KEY_FILE_VARIABLE))
    use_local = pki is not None and not pair_given and not pair_in_env
    certificate = chosen(
        "--cert-file",
        cert_file,
        CERT_FILE_VARIABLE,
        pki.certificate_file(CLI_NAME) if pki and use_local else None,
    )
    key = chosen(
        "--key-file",
        key_file,
        KEY_FILE_VARIABLE,
        pki.key_file(CLI_NAME) if pki and use_local else None,
    )
    try:
        return ChannelSecurity(ca=ca, certificate=certificate, key=key)
    except ConfigError as error:
        raise CredentialError(str(error)) from None


@dataclass(frozen=True)
class DevKey:
    """A data directory's dev key: where it is, and whether this start made it."""

    path: Path
    token: BearerToken
    created: bool


async def provision_dev_key(data_dir: Path, dsn: str) -> DevKey:
    """The dev key of `data_dir`, made in the router's store at `dsn` (tenant `dev`, every
    scope) and written to `data_dir/dev-api-key` unless that file already holds a key the store
    still accepts.

    A file whose key is gone (the database was reset, or the key revoked or expired) is
    replaced by a new key, so `tiergen up` always leaves a working one behind.
    """
    path = data_dir / DEV_KEY_FILE
    store = await KeyStore.open(dsn)
    try:
        current = _read(path)
        if current is not None:
            active = await store.list(DEV_TENANT)
            if any(record.prefix == current.label for record in active):
                return DevKey(path, current, created=False)
        issued = await store.create(DEV_TENANT, frozenset(Scope), name="tiergen up dev key")
    finally:
        await store.close()
    token = BearerToken(issued.secret)
    _write_private(path, token)
    return DevKey(path, token, created=True)


def _read(path: Path) -> BearerToken | None:
    try:
        return BearerToken.from_file(path)
    except (OSError, ValueError):
        return None


def _write_private(path: Path, token: BearerToken) -> None:
    """Writes `token` to `path` as a file only its owner can read, atomically."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    # O_EXCL: a file planted at the temporary name (or a symlink there) is refused, not used.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            # The umask can only narrow the mode given to open; this makes it exactly 0600.
            os.fchmod(out.fileno(), 0o600)
            out.write(token.secret + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
