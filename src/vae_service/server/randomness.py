"""Request ids and default seeds from one generator per process, not from the OS.

``secrets`` and ``os.urandom`` make a ``getrandom`` system call, and CPython lets go of
the GIL around it. Under load the event loop then had to win the GIL back from the
batcher's thread on every request: 17% of the loop's samples at c=32 (BENCHMARKS.md, "A
system call in every request"). Neither use needs an unpredictable number. An id must be
unique, and a seed is given back to the client (``X-Seed``) to repeat the draw.
"""

from __future__ import annotations

import os
import random

_generator = random.Random()  # seeded from os.urandom, once


def _reseed() -> None:
    _generator.seed()


# A forked worker would otherwise repeat its parent's ids and seeds.
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """16 hex digits, as ``secrets.token_hex(8)`` gives."""
    return f"{_generator.getrandbits(64):016x}"


def new_seed() -> int:
    """A seed for a draw the client gave none for: 0 to 2**31 - 1."""
    return _generator.getrandbits(31)
