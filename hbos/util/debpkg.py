"""Reading Debian packages: the one place that asks `dpkg-deb` for a .deb's
control fields (never a hand-written ar/tar parser), and the deb822 stanza
parser for dpkg's status file."""

from __future__ import annotations

import os

from hbos.util import run


def parse_stanza(text: str) -> dict[str, str]:
    """One deb822 stanza (no continuation lines needed for the fields we read)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def fields_argv(deb: str | os.PathLike, names: tuple[str, ...]) -> list[str]:
    return ["dpkg-deb", "--field", str(deb), *names]


def fields(deb: str | os.PathLike, *names: str) -> dict[str, str]:
    """The control fields `names` of `deb` (a field the package lacks is absent).

    Raises CommandFailed (dpkg-deb's own message) when `deb` is not a package."""
    text = run.output(fields_argv(deb, names))
    if len(names) == 1:   # dpkg-deb prints the bare value for a single field
        value = text.strip()
        return {names[0]: value} if value else {}
    return parse_stanza(text)
