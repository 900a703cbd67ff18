"""Client of the batch data API (the re-created one, or any compatible API by URL)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import requests
import tenacity

from tasador import json_body
from tasador.retry import retrying

log = logging.getLogger(__name__)

EXHAUSTED_MARKER = "Ya se recolect"  # the course API's 400 detail: "Ya se recolectó toda la información ..."


class BatchesExhausted(Exception):
    """The API has served every batch of this group and day (its 400 answer)."""


class DataApiError(Exception):
    """The API failed in a way retrying did not fix, or answered something that is not a batch."""


@dataclass(frozen=True)
class Batch:
    group_number: int
    day: str
    batch_number: int
    rows: list[dict]
    payload_sha256: str
    source_url: str


class DataApiClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0, retries: int = 5, backoff_s: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.session = requests.Session()

    def next_batch(self, group: int, day: str) -> Batch:
        """GET /data: the next batch. Retries 5xx, timeouts, connection errors and bodies cut short with
        exponential backoff; raises BatchesExhausted on the API's 400 'exhausted' answer. A retry may
        skip the batch the failed attempt made the API count: ``tasador.ingest`` notices by the batch
        number and recovers it."""
        url = f"{self.base_url}/data"
        body = self._get(url, {"group_number": group, "day": day})
        try:
            payload = json_body.loads(body)
            rows = payload["data"]
            batch_number = int(payload["batch_number"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataApiError(f"{url} answered 200 but not a batch: {exc!r}") from exc
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataApiError(f"{url} answered 200 but 'data' is not a list of listing objects")
        return Batch(group, day, batch_number, rows, hashlib.sha256(body).hexdigest(), self.base_url)

    def restart(self, group: int, day: str) -> None:
        self._get(f"{self.base_url}/restart_data_generation", {"group_number": group, "day": day})

    def _get(self, url: str, params: dict) -> bytes:
        def once() -> bytes:
            try:
                resp = self.session.get(url, params=params, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code == 200:
                return resp.content
            if resp.status_code == 400 and EXHAUSTED_MARKER in resp.text:
                raise BatchesExhausted(_detail(resp))
            if resp.status_code < 500:
                raise DataApiError(f"{url} answered {resp.status_code}: {_detail(resp)}")
            raise _Transient(f"HTTP {resp.status_code}: {_detail(resp)}")

        try:
            return retrying(f"data API {url}", self.retries + 1,
                            tenacity.wait_exponential(multiplier=self.backoff_s, min=0),
                            lambda exc: isinstance(exc, _Transient), log)(once)
        except _Transient as exc:
            raise DataApiError(f"{url} failed after {self.retries + 1} attempts; last: {exc}") from exc


class _Transient(Exception):
    """A failure another attempt may not have: 5xx, timeout, connection lost."""


def _detail(resp: requests.Response) -> str:
    try:
        return str(resp.json().get("detail", resp.text[:200]))
    except ValueError:
        return resp.text[:200]
