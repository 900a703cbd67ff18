"""Hostile input against the real Serve app over real HTTP: schemathesis from the app's own OpenAPI
over every route, and Hypothesis strategies for listings and for malformed bodies of every kind.

Never a 5xx; every 4xx names the problem; a good listing is priced right after. The module counts
the cases it sent and its last test asserts there were at least ``MIN_CASES``.

Collected in ``tests/test_serve.py``, after that module's own tests, against its served model (its
``fuzzed`` fixture): a module of their own paid a CI run a minute to ingest, register and deploy
the same. They only need a version in production; they move no alias.
"""

from __future__ import annotations

import functools
import json
import time

import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tasador.schema import STATES, STATUSES
from tests.serving import haproxy_state

MIN_CASES = 2_000
SENT = {"count": 0}
FUZZ = hsettings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=False)
JSON = {"Content-Type": "application/json"}


def answered_well(status: int, headers, text: str) -> None:
    """No 5xx except a 503 that says why (no model, overload); a 4xx carries a detail naming the problem."""
    SENT["count"] += 1
    assert status < 500 or (status == 503 and headers.get("Retry-After")), f"{status}: {text[:300]}"
    if 400 <= status < 500 and status not in (404, 405):  # no such route or method: FastAPI's own answer
        if status == 400 and not text.startswith("{"):  # the HTTP server refused the request line or a header
            assert "Invalid HTTP request" in text, text[:300]
            return
        detail = json.loads(text)["detail"]
        assert isinstance(detail, str) and len(detail) > 10, text[:300]


def sent(fuzzed, route: str, body: bytes, headers: dict) -> requests.Response:
    """POST ``body``; a request left unanswered fails naming what it sent (a CI run once saw one).

    A request whose keep-alive connection closed before any byte of an answer is sent again, once, on
    a new connection, as an HTTP client does: Ray re-executes HAProxy when the replica set changes,
    and the old HAProxy closes its idle client connections; a request sent on one at that moment is
    never read (a clean-clone run saw one, on a body its replay had answered 422). Every answer still
    counts, 5xx included; a body that brings the server down fails both times."""
    started = time.monotonic()
    post = functools.partial(fuzzed["session"].post, f"{fuzzed['s'].serve}{route}", data=body, headers=headers,
                             timeout=60)
    try:
        try:
            return post()
        except requests.exceptions.ConnectionError as exc:
            if "RemoteDisconnected" not in repr(exc):
                raise
            return post()
    except requests.exceptions.Timeout as exc:  # a CI run saw one (a ReadTimeout or a ConnectTimeout?): say where
        raise AssertionError(f"no answer after {time.monotonic() - started:.0f} s to POST {route} "
                             f"(Content-Type {headers.get('Content-Type')!r}, {len(body)} bytes, "
                             f"starting {body[:60]!r}): {type(exc).__name__}\n{haproxy_state(fuzzed['s'])}") from None


def answered(resp: requests.Response) -> None:
    answered_well(resp.status_code, resp.headers, resp.text)


def priced_after(fuzzed) -> None:
    resp = fuzzed["session"].post(f"{fuzzed['s'].serve}/predict", json=fuzzed["good"], timeout=30)
    assert resp.status_code == 200 and resp.json()["prices"][0] > 0, resp.text[:300]


def every_so_often(fuzzed) -> None:
    if SENT["count"] % 50 == 0:
        priced_after(fuzzed)


def test_every_route_from_the_openapi_schema(fuzzed):
    """schemathesis reads the app's OpenAPI and generates valid and invalid requests for each route
    (driven by Hypothesis here: its pytest plugin does not run under pytest 9)."""
    from schemathesis import GenerationMode

    api = schemathesis.openapi.from_url(f"{fuzzed['s'].serve}/openapi.json")
    routes = set()
    for result in api.get_all_operations():
        operation = result.ok()
        routes.add(operation.path)
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))
        examples = 400 if operation.method.upper() == "POST" else 40

        @given(case=cases)
        @hsettings(FUZZ, max_examples=examples)
        def call(case):
            resp = case.call(session=fuzzed["session"], timeout=60)
            answered_well(resp.status_code, resp.headers, resp.text)
            every_so_often(fuzzed)

        call()
    assert {"/predict", "/explain", "/model", "/health", "/admin/reload"} <= routes


# -- Hypothesis: listings whose every field may be wrong ---------------------------------------------
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10 ** 30),
                    max_value=10 ** 30), st.just(1e-320), st.just(1e308), st.just(-0.0))
text = st.one_of(st.text(max_size=50), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
                 st.just("\x00"), st.just("\u202e\u200b"), st.just("a" * 10_000))
anything = st.one_of(st.none(), st.booleans(), numbers, text, st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
field_values = {
    "status": st.one_of(st.sampled_from(STATUSES), anything), "state": st.one_of(st.sampled_from(STATES), anything),
    "city": st.one_of(text, anything), "zip_code": st.one_of(st.from_regex(r"\A[0-9]{1,5}\Z"), numbers, anything),
    "bed": st.one_of(numbers, anything), "bath": st.one_of(numbers, anything),
    "house_size": st.one_of(numbers, anything), "acre_lot": st.one_of(numbers, anything),
    "brokered_by": st.one_of(numbers, anything), "street": st.one_of(numbers, anything),
    "prev_sold_date": st.one_of(st.dates().map(str), text, anything),
}
listing = st.fixed_dictionaries({}, optional=field_values)


def _dumps(value) -> bytes:
    """JSON as a client may send it: NaN and Infinity literals included (Python's json writes them)."""
    return json.dumps(value).encode()


@given(body=st.one_of(listing, st.fixed_dictionaries({"listings": st.lists(listing, max_size=30)})))
@hsettings(FUZZ, max_examples=900)
def test_listings_with_any_field_wrong(fuzzed, body):
    resp = sent(fuzzed, "/predict", _dumps(body), JSON)
    answered(resp)
    every_so_often(fuzzed)
    if resp.status_code == 200:
        prices = resp.json()["prices"]
        assert all(p > 0 for p in prices) and len(resp.json()["prediction_ids"]) == len(prices)


# -- Hypothesis: bodies that are not what the API reads ----------------------------------------------
depth = st.integers(min_value=1, max_value=200_000)
malformed = st.one_of(
    st.binary(max_size=2_000),                                              # not JSON, not even text
    st.text(max_size=500).map(str.encode),                                  # text that is rarely JSON
    depth.map(lambda n: b"[" * n + b"]" * n),                               # deep arrays
    depth.map(lambda n: b'{"listings":' * n + b"1" + b"}" * n),            # deep objects
    st.integers(min_value=1, max_value=50_000).map(
        lambda n: json.dumps({f"k{i}": i for i in range(n)}).encode()),     # wide objects
    st.integers(min_value=0, max_value=200_000).map(lambda n: b'"' + b"x" * n + b'"'),  # long strings
    st.sampled_from([b"1e999", b"-1e999", b"1" * 5_000, b'{"bed": 1e999, "status": "sold", "state": "Ohio"}',
                     b'{"zip_code": 1e400, "status": "sold", "state": "Ohio"}', b"null", b"true", b'""',
                     b'{"listings": null}', b'{"listings": {}}', b'{"listings": [[]]}', b"\xef\xbb\xbf{}",
                     b'{"status": "sold", "state": "Ohio", "city": "\\u0000"}',
                     b'{"status": "sold", "state": "Ohio", "city": "\\ud800"}']),
    st.recursive(st.none() | st.booleans() | numbers | text,
                 lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
                 max_leaves=40).map(lambda v: json.dumps(v).encode()),
)
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "application/xml", "application/problem+json", "", "*/*", "\x7f"])


@given(body=malformed, content_type=content_types, route=st.sampled_from(["/predict", "/explain"]))
@hsettings(FUZZ, max_examples=900)
def test_malformed_bodies_and_content_types(fuzzed, body, content_type, route):
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        resp = sent(fuzzed, route, body, headers)
    except requests.exceptions.InvalidHeader:  # the client itself refuses to send such a header
        return
    answered(resp)
    every_so_often(fuzzed)
    if content_type in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
        assert resp.status_code == 415 and "application/json" in resp.json()["detail"]


def test_an_oversized_body_gets_413_without_being_read(fuzzed):
    s = fuzzed["s"]
    resp = fuzzed["session"].post(f"{s.serve}/predict", data=b" " * (s.serve_max_body_bytes + 1), headers=JSON,
                                  timeout=60)
    answered(resp)
    assert resp.status_code == 413 and "bytes" in resp.json()["detail"]


def test_a_good_listing_is_priced_after_all_of_it_and_enough_cases_ran(fuzzed):
    priced_after(fuzzed)
    health = requests.get(f"{fuzzed['s'].serve}/health", timeout=10).json()
    assert health["status"] == "ok" and health["prediction_log"]["lost"] == 0, health
    print(f"fuzz cases sent: {SENT['count']}")
    assert SENT["count"] >= MIN_CASES, f"only {SENT['count']} fuzz cases ran"
