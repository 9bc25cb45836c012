"""What the command-line tools of ``model/`` share: a user's mistake (bad data, an unusable
weights file, an impossible value, an unreadable path) is one line on stderr and exit
status 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Protocol

from vae_service.model.weights import Checkpoint, WeightsError
from vae_service.training.data import DataError

USER_ERRORS = (DataError, WeightsError, ValueError, OSError)


class Main(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


def one_line_errors(prog: str) -> Callable[[Main], Main]:
    """Decorate a ``main(argv) -> int`` so that a user error prints ``prog: error: ...``."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def guarded(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except USER_ERRORS as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2

        return guarded

    return decorate


def note_dropped_calibration(prog: str, ckpt: Checkpoint) -> None:
    """Say so when a tool that changes the model or its prior drops the file's anomaly
    calibration (model/calibration.py): the score needs ``vae-calibrate`` again."""
    if "anomaly" in ckpt.metadata:
        print(
            f"{prog}: dropped the anomaly calibration (made for the old weights); "
            "rerun vae-calibrate",
            flush=True,
        )
