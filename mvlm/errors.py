"""One root for every error a user can fix, so a command line tells them apart from bugs.

`MvlmError` and its area subclasses mean "your input is wrong, here is what to change": bad flags, bad
data, a checkpoint that cannot be read. Command lines catch only these (`user_errors_exit`), print one
line and exit 1; anything else keeps its traceback, because it is a bug in mvlm. argparse's own usage
errors keep exit status 2.

Some subclasses also derive from ValueError, as they did before this root existed, so code that caught
ValueError keeps working.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

USER_ERROR_EXIT_STATUS = 1


class MvlmError(Exception):
    """Something the user can fix; the message says what and how."""


class FlagError(MvlmError, ValueError):
    """A flag (or a combination of flags) that cannot work."""


class DataError(MvlmError, ValueError):
    """A data file, sample or image that training, evaluation or chat cannot use."""


class CheckpointError(MvlmError, ValueError):
    """A model folder that cannot be read as what it is meant to be."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A model path that does not exist (or is not a folder)."""


class OutputExistsError(FlagError, FileExistsError):
    """An output path that holds the user's files already: never overwritten."""


class ExportError(MvlmError, ValueError):
    """A model that the target format cannot hold faithfully; the message says why."""


class ScoreError(MvlmError, ValueError):
    """Benchmark answers or annotations that a scorer cannot score."""


@contextlib.contextmanager
def user_errors_exit(prog: str) -> Iterator[None]:
    """Turn an MvlmError into `prog: error: message` on stderr and exit status 1; let anything else through."""
    try:
        yield
    except MvlmError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_STATUS) from None
