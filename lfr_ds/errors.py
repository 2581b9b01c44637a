"""User-facing errors and the command-line wrapper that reports them.

Every CLI in lfr-ds reports bad input the same way: one line on stderr that names the thing (a file,
a flag, a config key) and says what to do, then a non-zero exit and no traceback. Code anywhere in the
package raises :class:`UserError` for such problems; :func:`cli` turns it into that line.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

#: Exit status for bad input (a file, a flag, a config). argparse uses the same code.
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem the user can fix: the message is the whole report, so make it name the thing and the fix."""


def cli(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a CLI ``main(argv)`` so a :class:`UserError` prints one line and exits 2, never a traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), so flag mistakes read like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")
