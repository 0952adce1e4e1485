"""Write a converted checkpoint into a new folder atomically: all of it, or nothing.

Converters write into a hidden staging folder beside the target and move it into place at the end, so
a refusal or a crash half-way never leaves a folder that looks like a checkpoint, and an existing
folder with the user's files in it is never written into.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from mvlm.errors import OutputExistsError


def check_new_folder(save_path: str, flag: str = "--save-path") -> None:
    """Refuse a target that exists and is not an empty folder (its files are the user's)."""
    if os.path.exists(save_path) and (not os.path.isdir(save_path) or os.listdir(save_path)):
        raise OutputExistsError(f"{flag} {save_path} exists and is not an empty folder; choose a new one")


@contextlib.contextmanager
def staged_folder(save_path: str, flag: str = "--save-path") -> Iterator[str]:
    """Yield a staging folder; on success it becomes `save_path`, on any error it is removed."""
    check_new_folder(save_path, flag)
    parent = os.path.dirname(os.path.abspath(save_path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".mvlm-convert-", dir=parent)
    try:
        yield staging
        check_new_folder(save_path, flag)
        if os.path.isdir(save_path):
            os.rmdir(save_path)
        os.replace(staging, save_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
