"""What every command-line entry point (``python -m addmlib.pipeline|training|sweep|benchmark|book``) does with bad
input: one line on stderr naming the parameter and the file, exit code 2, and nothing started.

The parameters themselves are checked by ``addmlib.config`` (``load_checked``, ``validate``); this module turns
their ``ConfigError`` (and argparse's usage errors) into that one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from .config import ConfigError

USAGE_ERROR = 2
"""Exit code of a refused invocation (bad arguments or parameters): nothing was started."""


def one_line(message: object) -> str:
    """``message`` on one line (YAML and other errors may span several)."""
    return " ".join(str(message).split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: ...; see --help``) with exit code 2, like bad parameters."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def run_main(body: Callable[[], int], failures: tuple[type[BaseException], ...] = ()) -> int:
    """Run an entry point's ``body``: a ConfigError is one line on stderr and exit code 2; an exception of a type in
    ``failures`` (an expected failure at run time, e.g. a failed notebook) is one line and exit code 1."""
    try:
        return body()
    except ConfigError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
    except failures as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
