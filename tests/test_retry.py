"""``tasador.retry``: the one retry and the one wait, without a stack."""

from __future__ import annotations

import itertools
import logging

import pytest
import tenacity

from tasador.retry import poll, retrying


def test_poll_returns_what_it_observed_once_the_condition_holds():
    counter = itertools.count()
    assert poll(lambda: next(counter), lambda seen: seen >= 3, 5, "the count", every_s=0.01) == 3


def test_poll_times_out_naming_what_it_waited_for_and_the_last_thing_seen():
    counter = itertools.count()
    with pytest.raises(TimeoutError, match=r"a negative count: not within 0.1s; last seen: \d+"):
        poll(lambda: next(counter), lambda seen: seen < 0, 0.1, "a negative count", every_s=0.01)


def test_poll_takes_a_transient_error_as_not_yet_and_raises_any_other_at_once():
    attempts = []

    def starting() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not listening yet")
        return "up"

    assert poll(starting, lambda seen: seen == "up", 5, "the server", every_s=0.01,
                transient=(ConnectionError,)) == "up"
    with pytest.raises(TimeoutError, match=r"last seen: ConnectionRefusedError\('never'\)"):
        poll(lambda: (_ for _ in ()).throw(ConnectionRefusedError("never")), bool, 0.1, "the server",
             every_s=0.01, transient=(ConnectionError,))
    attempts.clear()
    with pytest.raises(ValueError):
        poll(lambda: attempts.append(1) or int("x"), bool, 5, "a number", every_s=0.01)
    assert len(attempts) == 1  # not transient: raised at the first attempt


def test_retrying_retries_only_what_the_caller_calls_transient_and_raises_the_last_failure():
    calls = []

    def flaky() -> str:
        calls.append(1)
        raise ConnectionError(f"attempt {len(calls)}")

    with pytest.raises(ConnectionError, match="attempt 3"):
        retrying("the flaky call", 3, tenacity.wait_none(), lambda exc: isinstance(exc, ConnectionError),
                 logging.getLogger("test"))(flaky)
    calls.clear()
    with pytest.raises(ConnectionError, match="attempt 1"):
        retrying("the flaky call", 3, tenacity.wait_none(), lambda exc: False, logging.getLogger("test"))(flaky)
