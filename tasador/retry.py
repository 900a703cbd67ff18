"""The one retry mechanism (tenacity): for what comes back by itself, a PostgreSQL server restarting,
the data API failing for a moment, Ray's dashboard restarting. Each caller says what is transient;
anything else is raised at once, and the last failure is raised when the attempts run out. And the
one wait for a condition (``poll``): until what is observed holds, or a timeout naming what was seen."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


def retrying(what: str, attempts: int, wait: tenacity.wait.wait_base, transient: Callable[[BaseException], bool],
             log: logging.Logger) -> tenacity.Retrying:
    """``retrying(...)(function, *args)`` calls ``function`` until it returns, logging each retry of ``what``."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        log.warning("%s: %s; retry %d/%d in %.1fs", what, state.outcome.exception(), state.attempt_number,
                    attempts - 1, state.next_action.sleep)

    return tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), wait=wait,
                             retry=tenacity.retry_if_exception(transient), before_sleep=before_sleep, reraise=True)


def poll(observe: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str, every_s: float = 0.3,
         transient: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``observe`` every ``every_s`` until ``done`` holds of what it returned, and return that. An
    exception of a ``transient`` type counts as "not yet" (a server still starting). At ``timeout_s``:
    ``TimeoutError`` naming ``what`` and the last thing observed, so a failed wait says what it saw."""
    retryer = tenacity.Retrying(stop=tenacity.stop_after_delay(timeout_s), wait=tenacity.wait_fixed(every_s),
                                retry=(tenacity.retry_if_result(lambda seen: not done(seen))
                                       | tenacity.retry_if_exception_type(transient)))
    try:
        return retryer(observe)
    except tenacity.RetryError as exc:
        last = exc.last_attempt
        seen = last.exception() if last.failed else last.result()
        raise TimeoutError(f"{what}: not within {timeout_s:g}s; last seen: {seen!r}"[:3000]) from None
