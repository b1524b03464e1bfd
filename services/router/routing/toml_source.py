"""Router configuration files in TOML: parsing them, and errors that name the bad entry and line."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RouterConfigError", "TomlSource"]

_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


class RouterConfigError(ValueError):
    """A router configuration file that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class TomlSource:
    """The text of one configuration file and the name it goes by in error messages."""

    text: str
    name: str

    @classmethod
    def read(cls, path: Path | None, *, default_text: str, default_name: str) -> TomlSource:
        """The file at `path`, or the embedded defaults when `path` is None."""
        if path is None:
            return cls(default_text, default_name)
        try:
            return cls(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise RouterConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise RouterConfigError(f"{path}: not UTF-8 text: {exc.reason}") from exc

    def parse(self) -> dict[str, Any]:
        """The document, or an error carrying tomllib's line and column."""
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise RouterConfigError(f"{self.name}: not valid TOML: {exc}") from exc

    def error(self, path: Sequence[str], message: str) -> RouterConfigError:
        """An error about the entry at `path` (for example ("stages", "refine", "tier"))."""
        line = self._line_of(path)
        where = f"{self.name}:{line}" if line is not None else self.name
        return RouterConfigError(f"{where}: {'.'.join(path)}: {message}")

    def _line_of(self, path: Sequence[str]) -> int | None:
        """The line defining `path` when it is written as `[table]` then `key = ...`.

        Entries written as dotted keys or inside inline tables are not located; the error then
        names the entry without a line, which still identifies it.
        """
        wanted_table, wanted_key = ".".join(path[:-1]), _unquote(path[-1])
        whole_table = ".".join(path)
        table = ""
        for number, line in enumerate(self.text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                table = ".".join(_unquote(part.strip()) for part in header.group(1).split("."))
                if table == whole_table:
                    return number
                continue
            key = _KEY.match(line)
            if key and table == wanted_table and _unquote(key.group(1)) == wanted_key:
                return number
        return None


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name
