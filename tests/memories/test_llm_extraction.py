"""The LLM extractor against a real HTTP server on localhost that speaks the OpenAI chat
completions protocol: what it sends, what it accepts, and that every failure is
ExtractionUnavailable (the transcript is kept and retried), never partial garbage."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from memories.extraction import ExtractedMemory, ExtractionUnavailable, Message, get_extractor
from memories.extraction.llm import MAX_CONTENT_CHARS, MAX_MEMORIES, LLMExtractor
from memories.extraction.rules import RuleExtractor
from tests.local_server import JSONHandler, local_server

MESSAGES = [
    Message("system", "Be brief."),
    Message("user", "I'm allergic to peanuts and we're moving to Berlin in March."),
    Message("assistant", "Noted! Berlin is lovely in spring."),
    Message("user", "I prefer window seats."),
]

GOOD_ANSWER: dict[str, Any] = {
    "memories": [
        {"content": "User is allergic to peanuts", "kind": "fact", "category": "health", "importance": 0.9},
        {"content": "User is moving to Berlin in March", "kind": "event", "category": "location", "importance": 0.6},
        {"content": "User prefers window seats", "kind": "preference", "category": "travel", "importance": 0.5},
    ],
    "summary": "The user talked about a peanut allergy, a move to Berlin and seat preferences.",
}


@dataclass
class FakeChat:
    """What the local server answers, and what it was sent."""

    url: str
    mode: str = "ok"
    # The text of the model's message: the extraction JSON, or anything else.
    content: str = json.dumps(GOOD_ANSWER)
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[FakeChat]:
    state = FakeChat(url="")

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            body = self.read_json()
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if self.path != "/v1/chat/completions":
                self.answer(404, b'{"error": {"message": "not found"}}')
                return
            if state.mode == "error":
                self.answer(500, b'{"error": {"message": "the model crashed"}}')
                return
            if state.mode == "html":
                self.answer(200, b"<html>Bad gateway</html>", "text/html")
                return
            if state.mode == "slow":
                time.sleep(1.0)
            finish_reason = "length" if state.mode == "truncated" else "stop"
            completion = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": state.content},
                        "finish_reason": finish_reason,
                    }
                ],
            }
            if state.mode == "no_choices":
                completion["choices"] = []
            self.answer(200, json.dumps(completion).encode())

    with local_server(Handler) as url:
        state.url = url
        yield state


def _llm(server: FakeChat, **overrides: Any) -> LLMExtractor:
    options: dict[str, Any] = {
        "base_url": server.url,
        "model": "gpt-test",
        "api_key": "sk-test",
        "timeout": 5.0,
        "summary_max_chars": 600,
    }
    options.update(overrides)
    return LLMExtractor(**options)


# -- a good answer -----------------------------------------------------------------------------------


def test_a_good_answer_becomes_the_extraction(server: FakeChat) -> None:
    extraction = _llm(server).extract(MESSAGES)

    assert extraction.memories == [
        ExtractedMemory("User is allergic to peanuts", "fact", "health", 0.9),
        ExtractedMemory("User is moving to Berlin in March", "event", "location", 0.6),
        ExtractedMemory("User prefers window seats", "preference", "travel", 0.5),
    ]
    assert extraction.summary == GOOD_ANSWER["summary"]


def test_the_request_carries_the_model_the_transcript_the_schema_and_the_key(server: FakeChat) -> None:
    _llm(server).extract(MESSAGES)

    (request,) = server.requests
    body = request["body"]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    assert body["model"] == "gpt-test"
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system"
    assert '"memories"' in system["content"]
    assert '"summary"' in system["content"]
    assert all(kind in system["content"] for kind in ('"fact"', '"preference"', '"event"'))
    # The whole transcript, every speaker labelled, in one user message.
    assert user["role"] == "user"
    assert "System: Be brief." in user["content"]
    assert "User: I'm allergic to peanuts and we're moving to Berlin in March." in user["content"]
    assert "Assistant: Noted! Berlin is lovely in spring." in user["content"]
    assert user["content"].index("allergic") < user["content"].index("Noted") < user["content"].index("window")


def test_no_key_sends_no_authorization(server: FakeChat) -> None:
    _llm(server, api_key="").extract(MESSAGES)

    assert server.requests[0]["auth"] is None


def test_an_empty_transcript_makes_no_request(server: FakeChat) -> None:
    extraction = _llm(server).extract([])

    assert extraction.memories == []
    assert extraction.summary == ""
    assert server.requests == []


def test_an_answer_in_a_code_fence_with_loose_fields_is_normalised(server: FakeChat) -> None:
    answer = {
        "memories": [
            {"content": "  User   likes\n tea ", "kind": "Preference", "importance": 1.4, "source": "I like tea"},
            {"content": "User likes tea", "kind": "preference", "category": "Food", "importance": 0.5},
            {"content": "User is vegan", "kind": "fact", "category": None, "importance": -0.2},
            {"content": "User has 2 cats", "kind": "fact", "category": "pets", "importance": 1},
        ],
        "summary": "A short chat about tea.",
    }
    server.content = "```json\n" + json.dumps(answer) + "\n```"

    extraction = _llm(server).extract(MESSAGES)

    assert extraction.memories == [
        # Whitespace collapsed, kind lower-cased, a missing category is "general", importance clamped to 0..1.
        ExtractedMemory("User likes tea", "preference", "general", 1.0, "I like tea"),
        ExtractedMemory("User is vegan", "fact", "general", 0.0),
        ExtractedMemory("User has 2 cats", "fact", "pets", 1.0),
    ]


def test_a_long_summary_is_cut_to_the_bound(server: FakeChat) -> None:
    sentence = "The user discussed their upcoming move and many related details. "
    server.content = json.dumps({"memories": [], "summary": sentence * 20})

    summary = _llm(server, summary_max_chars=200).extract(MESSAGES).summary

    assert len(summary) <= 200
    assert summary.endswith("details.")


# -- failures: all transient, none partial -------------------------------------------------------------


def test_http_500_is_unavailable(server: FakeChat) -> None:
    server.mode = "error"

    with pytest.raises(ExtractionUnavailable, match="HTTP 500"):
        _llm(server).extract(MESSAGES)


def test_a_timeout_is_unavailable(server: FakeChat) -> None:
    server.mode = "slow"

    started = time.perf_counter()
    with pytest.raises(ExtractionUnavailable, match="timed out"):
        _llm(server, timeout=0.2).extract(MESSAGES)
    assert time.perf_counter() - started < 0.9


def test_a_closed_port_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    extractor = LLMExtractor(base_url=f"http://127.0.0.1:{closed_port}/v1", model="gpt-test", timeout=2.0)

    with pytest.raises(ExtractionUnavailable, match="could not be reached"):
        extractor.extract(MESSAGES)


def test_a_body_that_is_not_json_is_unavailable(server: FakeChat) -> None:
    server.mode = "html"

    with pytest.raises(ExtractionUnavailable, match="invalid JSON"):
        _llm(server).extract(MESSAGES)


def test_an_answer_without_choices_is_unavailable(server: FakeChat) -> None:
    server.mode = "no_choices"

    with pytest.raises(ExtractionUnavailable, match="without choices"):
        _llm(server).extract(MESSAGES)


def test_an_answer_cut_off_at_the_token_limit_is_unavailable(server: FakeChat) -> None:
    server.mode = "truncated"

    with pytest.raises(ExtractionUnavailable, match="finish_reason=length"):
        _llm(server).extract(MESSAGES)


def test_content_that_is_not_json_is_unavailable(server: FakeChat) -> None:
    server.content = "Sure! Here are the memories: the user is allergic to peanuts."

    with pytest.raises(ExtractionUnavailable, match="not JSON"):
        _llm(server).extract(MESSAGES)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([GOOD_ANSWER], "JSON list, not an object"),
        ({"summary": "x"}, "without a 'memories' list"),
        ({"memories": {"content": "User is vegan"}, "summary": "x"}, "without a 'memories' list"),
        ({"memories": [], "summary": None}, "without a 'summary' string"),
        ({"memories": []}, "without a 'summary' string"),
        ({"memories": ["User is vegan"], "summary": ""}, r"memories\[0\] is str, not an object"),
        ({"memories": [{"kind": "fact", "importance": 0.5}], "summary": ""}, "'content' must be a non-empty"),
        ({"memories": [{"content": " ", "kind": "fact", "importance": 0.5}], "summary": ""}, "non-empty"),
        ({"memories": [{"content": 7, "kind": "fact", "importance": 0.5}], "summary": ""}, "non-empty"),
        (
            {
                "memories": [{"content": "x" * (MAX_CONTENT_CHARS + 1), "kind": "fact", "importance": 0.5}],
                "summary": "",
            },
            f"at most {MAX_CONTENT_CHARS}",
        ),
        ({"memories": [{"content": "User is vegan", "importance": 0.5}], "summary": ""}, "'kind' must be one of"),
        (
            {"memories": [{"content": "User is vegan", "kind": "summary", "importance": 0.5}], "summary": ""},
            r"'kind' must be one of \['event', 'fact', 'preference'\], not 'summary'",
        ),
        ({"memories": [{"content": "User is vegan", "kind": "fact"}], "summary": ""}, "'importance' must be a number"),
        (
            {"memories": [{"content": "User is vegan", "kind": "fact", "importance": "high"}], "summary": ""},
            "'importance' must be a number",
        ),
        (
            {"memories": [{"content": "User is vegan", "kind": "fact", "importance": True}], "summary": ""},
            "'importance' must be a number",
        ),
        (
            {
                "memories": [{"content": "User is vegan", "kind": "fact", "importance": 0.5, "category": ["a"]}],
                "summary": "",
            },
            "'category' must be a short string",
        ),
        (
            {
                "memories": [{"content": "User is vegan", "kind": "fact", "importance": 0.5, "category": 3}],
                "summary": "",
            },
            "'category' must be a short string",
        ),
        (
            {
                "memories": [{"content": "User is vegan", "kind": "fact", "importance": 0.5}] * (MAX_MEMORIES + 1),
                "summary": "",
            },
            f"at most {MAX_MEMORIES}",
        ),
    ],
)
def test_an_answer_of_the_wrong_shape_is_unavailable_and_nothing_is_kept(
    server: FakeChat, answer: Any, message: str
) -> None:
    server.content = json.dumps(answer)

    with pytest.raises(ExtractionUnavailable, match=message):
        _llm(server).extract(MESSAGES)


def test_one_bad_memory_refuses_the_whole_answer(server: FakeChat) -> None:
    answer = {**GOOD_ANSWER, "memories": [*GOOD_ANSWER["memories"], {"content": "User is tall", "kind": "opinion"}]}
    server.content = json.dumps(answer)

    with pytest.raises(ExtractionUnavailable, match=r"memories\[3\]: 'kind' must be one of"):
        _llm(server).extract(MESSAGES)


def test_nan_importance_is_refused(server: FakeChat) -> None:
    # json.dumps writes NaN, which Python's json (and many servers) accept.
    server.content = json.dumps(
        {"memories": [{"content": "User is vegan", "kind": "fact", "importance": float("nan")}], "summary": ""}
    )

    with pytest.raises(ExtractionUnavailable, match="'importance' must be a number"):
        _llm(server).extract(MESSAGES)


# -- get_extractor -------------------------------------------------------------------------------------


def test_settings_select_the_llm_extractor(server: FakeChat) -> None:
    llm = {
        **settings.EXTRACTION,
        "PROVIDER": "openai",
        "BASE_URL": server.url,
        "MODEL": "gpt-from-settings",
        "API_KEY": "sk-settings",
        "TIMEOUT": 3.0,
        "SUMMARY_MAX_CHARS": 300,
    }
    # Changing EXTRACTION resets the process's extractor, on the way in and out.
    with override_settings(EXTRACTION=llm):
        extractor = get_extractor()
        assert isinstance(extractor, LLMExtractor)
        assert extractor.name == "openai"
        assert extractor.timeout == 3.0
        assert extractor.summary_max_chars == 300
        assert get_extractor() is extractor
        extractor.extract(MESSAGES)
    assert isinstance(get_extractor(), RuleExtractor)
    assert server.requests[0]["body"]["model"] == "gpt-from-settings"
    assert server.requests[0]["auth"] == "Bearer sk-settings"


def test_an_unknown_provider_is_a_configuration_error() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(EXTRACTION={**settings.EXTRACTION, "PROVIDER": "magic"}),
        pytest.raises(ImproperlyConfigured, match="'magic'"),
    ):
        get_extractor()
