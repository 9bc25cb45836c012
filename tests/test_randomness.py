"""Request ids and default seeds: unique, in range, made without a system call, and
not repeated by a forked worker."""

from __future__ import annotations

import os
import re

import pytest

from vae_service.server import randomness


def test_request_ids_are_16_hex_digits_and_do_not_repeat() -> None:
    ids = [randomness.new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_seeds_are_in_the_31_bit_range_and_vary() -> None:
    seeds = [randomness.new_seed() for _ in range(1_000)]
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) > 990


def test_no_system_call_per_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.urandom (getrandom) lets go of the GIL: it must not run once a request."""

    def refuse(n: int) -> bytes:
        raise AssertionError("os.urandom called")

    monkeypatch.setattr(os, "urandom", refuse)
    assert randomness.new_request_id() and randomness.new_seed() >= 0


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id and seed, then out at once
        os.write(write, f"{randomness.new_request_id()} {randomness.new_seed()}".encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != f"{randomness.new_request_id()} {randomness.new_seed()}"
