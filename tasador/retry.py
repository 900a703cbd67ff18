"""The one retry mechanism (tenacity): for what comes back by itself, a PostgreSQL server restarting,
the data API failing for a moment, Ray's dashboard restarting. Each caller says what is transient;
anything else is raised at once, and the last failure is raised when the attempts run out."""

from __future__ import annotations

import logging
from collections.abc import Callable

import tenacity


def retrying(what: str, attempts: int, wait: tenacity.wait.wait_base, transient: Callable[[BaseException], bool],
             log: logging.Logger) -> tenacity.Retrying:
    """``retrying(...)(function, *args)`` calls ``function`` until it returns, logging each retry of ``what``."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        log.warning("%s: %s; retry %d/%d in %.1fs", what, state.outcome.exception(), state.attempt_number,
                    attempts - 1, state.next_action.sleep)

    return tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), wait=wait,
                             retry=tenacity.retry_if_exception(transient), before_sleep=before_sleep, reraise=True)
