"""Property-based fuzzing of request bodies through the stack (nginx -> replicas -> fake upstream), with hypothesis.

Generated: valid-ish chat / completions / embeddings bodies with keys dropped, wrong types, extra fields, huge
numbers, NaN and infinity, any Unicode (unpaired surrogates included), nested garbage; valid JSON text cut or
spliced; raw bytes under assorted Content-Types. Property: every answer is JSON, under 500 unless it is an
upstream_* error about the provider, with no traceback, and the gateway serves a normal request afterwards.

Deterministic for CI: derandomize=True and no example database. How many bodies ran is printed at the end of
the run ("fuzzing: N request bodies tried", from conftest.FUZZ_CASES); each test checks it tried as many as configured.

Not fuzzed: `"stream": true`. A stream's 200 goes out before the provider is called, so a later failure can
only cut the stream (MLflow 3.17.2; see README's known limits): its status says nothing. Bodies here always
ask for a whole answer.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests
from conftest import FUZZ_CASES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.integration, pytest.mark.stack]

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMALL_FUZZ = settings(FUZZ, max_examples=100)

# route -> (kind, the body a well-behaved client sends)
ROUTES = {
    "/gateway/chat/invocations": ("chat", {}),
    "/endpoints/chat/invocations": ("chat", {}),
    "/gateway/chat-split/invocations": ("chat", {}),
    "/gateway/anthropic-chat/invocations": ("chat", {}),
    "/v1/chat/completions": ("chat", {"model": "chat"}),
    "/gateway/completions/invocations": ("completions", {}),
    "/v1/completions": ("completions", {"model": "completions"}),
    "/gateway/embeddings/invocations": ("embeddings", {}),
    "/v1/embeddings": ("embeddings", {"model": "embeddings"}),
}
FIELDS = {  # fields each kind knows, so that mutations hit them as well as unknown ones
    "chat": [
        "messages",
        "temperature",
        "max_tokens",
        "n",
        "stop",
        "top_p",
        "tools",
        "tool_choice",
        "response_format",
        "model",
        "stream_options",
        "user",
    ],
    "completions": ["prompt", "temperature", "max_tokens", "n", "stop", "model"],
    "embeddings": ["input", "model", "encoding_format", "dimensions"],
}
# 502 and 504 are the documented answers when the provider fails; a client cannot cause them here.
UPSTREAM_STATUSES = {502, 504}

# Any Unicode, unpaired surrogates included (json.dumps writes them as \udXXX escapes, which json.loads takes).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
huge_numbers = st.integers(min_value=-(2**80), max_value=2**80) | st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | huge_numbers | any_text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=10
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | any_text
content = (
    any_text
    | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": any_text}), max_size=3)
    | json_values
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": any_text,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": any_text, "arguments": any_text}),
        }
    ),
    max_size=2,
)
message = st.fixed_dictionaries(
    {"role": roles, "content": content},
    optional={"tool_calls": tool_calls | json_values, "tool_call_id": any_text, "name": json_values},
)
messages = st.lists(message, min_size=0, max_size=4) | json_values


@st.composite
def bodies(draw) -> tuple[str, dict, str]:
    """(route, body, kind): a valid-ish body, then zero to four mutations."""
    route = draw(st.sampled_from(sorted(ROUTES)))
    kind, base = ROUTES[route]
    body = dict(base)
    if kind == "chat":
        body["messages"] = draw(messages)
    elif kind == "completions":
        body["prompt"] = draw(any_text | json_values)
    else:
        body["input"] = draw(any_text | st.lists(any_text, max_size=3) | json_values)
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from(FIELDS[kind]) | any_text)
        action = draw(st.sampled_from(["set", "drop", "huge"]))
        if action == "drop":
            body.pop(field, None)
        else:
            body[field] = draw(huge_numbers if action == "huge" else json_values)
    body.pop("stream", None)  # see the module docstring
    return route, body, kind


def send(stack, session: requests.Session, route: str, data: bytes, content_type: str | None) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return session.post(f"{stack.url}{route}", data=data, headers=headers, timeout=60)


def check_answer(r: requests.Response, what: str) -> None:
    context = f"{what} -> {r.status_code} {r.text[:300]}"
    assert "Traceback" not in r.text, context
    assert r.headers.get("Content-Type", "").startswith("application/json"), context
    answer = r.json()
    assert isinstance(answer, dict), context
    if r.status_code == 200:
        return
    assert 400 <= r.status_code < 500 or r.status_code in UPSTREAM_STATUSES, context
    error = answer.get("error")
    if r.status_code in UPSTREAM_STATUSES:
        assert isinstance(error, dict) and error["type"].startswith("upstream_"), context
    elif error is not None:
        assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), context
    else:  # a provider's own 4xx, passed on in MLflow's shape
        assert isinstance(answer.get("detail"), str) and answer["detail"], context


@pytest.fixture(scope="module")
def session(stack):
    """One keep-alive connection for the fuzz bodies; at the end, the gateway still answers and logged no
    traceback while being fuzzed."""
    logs_before = {name: len(stack.log(f"replica-{name.split('-')[1]}")) for name in stack.replicas}
    with requests.Session() as s:
        yield s
    ok = requests.post(
        f"{stack.url}/gateway/chat/invocations",
        json={"messages": [{"role": "user", "content": "still there?"}]},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    for name, offset in logs_before.items():
        new = stack.log(f"replica-{name.split('-')[1]}")[offset:]
        assert "Traceback" not in new, f"{name} logged a traceback while fuzzed:\n{new[-3000:]}"


def tried(counts: Counter, expected: int) -> None:
    """A fuzz test that silently ran nothing would prove nothing: each test checks that it tried as many bodies
    as configured (its own count, so the check holds in any order) and adds them to the run's summary line."""
    FUZZ_CASES.update(counts)
    assert sum(counts.values()) == expected, counts


def test_fuzzed_json_bodies_get_json_answers_and_never_a_5xx(stack, session):
    kinds: Counter[str] = Counter()

    @FUZZ
    @given(case=bodies())
    def one(case):
        route, body, kind = case
        kinds[f"json-{kind}"] += 1
        data = json.dumps(body).encode()  # NaN and Infinity as JavaScript writes them, which Python reads back
        check_answer(send(stack, session, route, data, "application/json"), f"POST {route} {data[:300]!r}")

    one()
    tried(kinds, FUZZ.max_examples)
    assert set(kinds) == {"json-chat", "json-completions", "json-embeddings"}, kinds


def test_cut_and_spliced_json_text_gets_json_answers(stack, session):
    kinds: Counter[str] = Counter()

    @SMALL_FUZZ
    @given(case=bodies(), cut=st.integers(min_value=0, max_value=400), splice=any_text)
    def one(case, cut, splice):
        route, body, _ = case
        kinds["json-text-damaged"] += 1
        text = json.dumps(body)
        cut = min(cut, len(text))
        data = (text[:cut] + splice + text[cut + 1 :]).encode("utf-8", "surrogatepass")
        check_answer(send(stack, session, route, data, "application/json"), f"POST {route} {data[:300]!r}")

    one()
    tried(kinds, SMALL_FUZZ.max_examples)


def test_raw_bytes_get_json_answers(stack, session):
    kinds: Counter[str] = Counter()

    @SMALL_FUZZ
    @given(
        route=st.sampled_from(sorted(ROUTES)),
        data=st.binary(max_size=300),
        content_type=st.sampled_from(
            [
                "application/json",
                "application/json; charset=latin-1",
                "text/plain",
                "application/octet-stream",
                "multipart/form-data; boundary=x",
                None,
            ]
        ),
    )
    def one(route, data, content_type):
        kinds["raw-bytes"] += 1
        check_answer(send(stack, session, route, data, content_type), f"POST {route} {content_type} {data[:300]!r}")

    one()
    tried(kinds, SMALL_FUZZ.max_examples)
