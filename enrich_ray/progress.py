"""Progress bars a person sees: tqdm drawn on the stream the command line chose for its console.

The command line sends the libraries' stderr to the run's log file; our own bars (pack's scan and
write, ENRICH's picks, the evaluation's classifiers) still belong on the console, and off it at
--quiet."""
from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

_console: dict[str, Any] = {"stream": None, "quiet": False}


def set_console(stream: IO[str] | None, quiet: bool = False) -> None:
    """Where bars draw from now on (None: sys.stderr as it is then); quiet turns them off."""
    _console.update(stream=stream, quiet=quiet)


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on the console stream; `disable=True` still turns it off."""
    kwargs["disable"] = kwargs.get("disable", False) or _console["quiet"]
    return tqdm(iterable, file=_console["stream"] or sys.stderr, **kwargs)
