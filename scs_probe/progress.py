"""Progress bars for long work: shown on a terminal, silent in logs (where tqdm writes a line per update)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from .schema import escape_controls


def interactive() -> bool:
    return sys.stderr.isatty()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """tqdm on stderr when `enabled` and stderr is a terminal; a silent pass-through otherwise."""
    return tqdm(iterable, disable=not (enabled and interactive()), dynamic_ncols=True, **kwargs)


def print_escaped(message: str) -> None:
    """print, with control characters escaped line by line: run names and values read from files reach the log
    (the default log of train, sweep, tune and analyses)."""
    print(escape_controls(message, keep_lines=True))


def write_line(message: str, log=print_escaped) -> None:
    """One line of output that does not break a bar in progress (tqdm.write on a terminal, `log` elsewhere), its
    control characters escaped (run outcomes quote errors, which may quote files)."""
    (tqdm.write if interactive() and log in (print, print_escaped) else log)(escape_controls(message, keep_lines=True))
