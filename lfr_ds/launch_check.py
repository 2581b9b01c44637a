"""``lfr-check-hostfile``: validate a DeepSpeed hostfile before a multi-node launch.

    lfr-check-hostfile hosts        # prints "hosts: 2 nodes, 16 slots (node0=8, node1=8)", or one error line

A hostfile has one ``HOSTNAME slots=N`` line per node (N: the ranks to start there, usually its GPU
count); blank lines and ``#`` comments are ignored. The deepspeed launcher is laxer and later: given a
missing hostfile it silently trains on the local node alone, it accepts ``slots=0`` and trailing text
after the slot count, and it reports a bad line as a traceback. This check refuses all of those, in one
line that names the file and line, before any node starts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from lfr_ds.errors import ArgumentParser, UserError, cli

_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\d+)\s*(?:#.*)?$")


def read_hostfile(path: str | Path) -> dict[str, int]:
    """The hosts of ``path`` and their slots, in file order; :class:`UserError` for anything off."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: hostfile not found; write one 'HOSTNAME slots=N' line per node")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; write one 'HOSTNAME slots=N' line per node") from None
    hosts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise UserError(f"{path}:{n}: expected 'HOSTNAME slots=N', got {line!r}")
        host, slots = m["host"], int(m["slots"])
        if host in hosts:
            raise UserError(
                f"{path}:{n}: host {host} is already listed on line {first_line[host]}; list each node once"
            )
        if slots == 0:
            raise UserError(f"{path}:{n}: {host} has slots=0; give every node at least one slot (its GPU count)")
        hosts[host], first_line[host] = slots, n
    if not hosts:
        raise UserError(f"{path}: lists no hosts; write one 'HOSTNAME slots=N' line per node")
    return hosts


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(
        prog="lfr-check-hostfile",
        description="Validate a DeepSpeed hostfile (one 'HOSTNAME slots=N' line per node).",
    )
    p.add_argument("hostfile")
    args = p.parse_args(argv)
    hosts = read_hostfile(args.hostfile)
    listing = ", ".join(f"{h}={s}" for h, s in hosts.items())
    print(f"{args.hostfile}: {len(hosts)} node(s), {sum(hosts.values())} slots ({listing})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
