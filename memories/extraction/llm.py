"""An extractor over any OpenAI-compatible chat API: OpenAI, Ollama, vLLM, LiteLLM... (POST /chat/completions).

The model is asked for one JSON object and its answer is validated strictly:
either every memory in it is well formed, or the whole answer is refused with
ExtractionUnavailable and the transcript is retried later. A half-valid
answer is never stored: what the model got wrong once it may get right on the
next attempt, but a wrong memory stays wrong.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from memories.extraction import KINDS, ExtractedMemory, Extraction, ExtractionUnavailable, Message
from memoryproject.breakers import BreakerOpen, breaker
from memoryproject.http import ProcessClient

__all__ = ["LLMExtractor", "system_prompt"]

MAX_MEMORIES = 200
MAX_CONTENT_CHARS = 500
MAX_CATEGORY_CHARS = 40

_LABELS = {"user": "User", "assistant": "Assistant", "system": "System"}
_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


def system_prompt(*, summary_max_chars: int) -> str:
    return f"""You extract long-term memories about the user from a chat transcript.

Answer with one JSON object and nothing else, of this shape:
{{"memories": [{{"content": "...", "kind": "fact" | "preference" | "event", "category": "...", "importance": 0.0}}],
 "summary": "..."}}

memories: only durable things the USER says about themselves: facts (job, home, family, health,
allergies, diet), preferences (likes, dislikes, standing instructions), events and plans (trips, moves,
appointments, milestones), relationships and constraints.
- Write each memory as one short third-person sentence that starts with "User", e.g.
  "User prefers window seats", "User's wife is called Anna", "User is allergic to peanuts".
- Never attribute to the user what the assistant or the system says.
- Leave out small talk, greetings, thanks, questions, hypotheticals and passing moods.
- kind: "fact", "preference" or "event".
- category: one short lowercase word such as travel, food, family, work, health, location, plans, general.
- importance: a number from 0 to 1; about 0.9 for health and allergies, 0.7-0.8 for identity and
  relationships, 0.5-0.6 for plans, 0.3-0.5 for mild likes.
- No durable information: "memories": [].

summary: what the session was about, in the third person, at most {summary_max_chars} characters;
"" for an empty session."""


class LLMExtractor:
    """Extracts through `{base_url}/chat/completions`; every failure is ExtractionUnavailable."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout: float = 30.0,
        summary_max_chars: int = 600,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 60.0,
    ) -> None:
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self.summary_max_chars = summary_max_chars
        self._client = ProcessClient(timeout=timeout, bearer=api_key)
        self._breaker_settings = (breaker_threshold, breaker_cooldown)

    def extract(self, messages: Sequence[Message]) -> Extraction:
        if not messages:
            return Extraction()
        content = self._complete(self.request_body(messages))
        return self._parse(content)

    def request_body(self, messages: Sequence[Message]) -> dict[str, Any]:
        # The transcript is one user message, not replayed as chat turns: the
        # model must read the conversation, not continue it.
        transcript = "\n".join(f"{_LABELS.get(m.role, m.role.title())}: {m.content}" for m in messages)
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system_prompt(summary_max_chars=self.summary_max_chars)},
                {"role": "user", "content": f"Transcript:\n{transcript}"},
            ],
            "response_format": {"type": "json_object"},
            "temperature": 0,
        }

    def _complete(self, body: dict[str, Any]) -> str:
        fail_max, reset_timeout = self._breaker_settings
        # Only the provider failing counts towards the breaker, not an answer the model got wrong.
        guard = breaker("llm", fail_max=fail_max, reset_timeout=reset_timeout, failures=(ExtractionUnavailable,))
        try:
            with guard.guard():
                response = self._client.post_json(self.url, body, unavailable=ExtractionUnavailable)
        except BreakerOpen as error:
            raise ExtractionUnavailable(str(error)) from None
        if response.status_code != 200:
            raise ExtractionUnavailable(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ExtractionUnavailable(f"{self.url} answered with invalid JSON: {response.text[:300]}") from exc
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ExtractionUnavailable(f"{self.url} answered without choices: {response.text[:300]}")
        choice = choices[0]
        if choice.get("finish_reason") == "length":
            raise ExtractionUnavailable(f"{self.url} cut the answer off at the token limit (finish_reason=length)")
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise ExtractionUnavailable(f"{self.url} answered a choice without text content")
        return content

    def _parse(self, content: str) -> Extraction:
        fenced = _FENCE.match(content)
        text = fenced.group("body") if fenced else content
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ExtractionUnavailable(
                f"model {self.model!r} answered text that is not JSON: {content[:200]!r}"
            ) from exc
        if not isinstance(data, dict):
            raise ExtractionUnavailable(f"model {self.model!r} answered JSON {type(data).__name__}, not an object")
        raw_memories = data.get("memories")
        summary = data.get("summary")
        if not isinstance(raw_memories, list):
            raise ExtractionUnavailable(f"model {self.model!r} answered without a 'memories' list")
        if not isinstance(summary, str):
            raise ExtractionUnavailable(f"model {self.model!r} answered without a 'summary' string")
        if len(raw_memories) > MAX_MEMORIES:
            raise ExtractionUnavailable(
                f"model {self.model!r} answered {len(raw_memories)} memories; at most {MAX_MEMORIES} are accepted"
            )
        memories: list[ExtractedMemory] = []
        seen: set[str] = set()
        for position, item in enumerate(raw_memories):
            memory = self._memory(item, position)
            if memory.content.lower() not in seen:
                seen.add(memory.content.lower())
                memories.append(memory)
        return Extraction(memories=memories, summary=_bounded(summary.strip(), self.summary_max_chars))

    def _memory(self, item: Any, position: int) -> ExtractedMemory:
        where = f"model {self.model!r}, memories[{position}]"
        if not isinstance(item, dict):
            raise ExtractionUnavailable(f"{where} is {type(item).__name__}, not an object")
        content = item.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ExtractionUnavailable(f"{where}: 'content' must be a non-empty string")
        content = " ".join(content.split())
        if len(content) > MAX_CONTENT_CHARS:
            raise ExtractionUnavailable(f"{where}: 'content' is {len(content)} characters; at most {MAX_CONTENT_CHARS}")
        kind = item.get("kind")
        if not isinstance(kind, str) or kind.strip().lower() not in KINDS:
            raise ExtractionUnavailable(f"{where}: 'kind' must be one of {sorted(KINDS)}, not {kind!r}")
        category = item.get("category", "general")
        if category is None or (isinstance(category, str) and not category.strip()):
            category = "general"
        if not isinstance(category, str) or len(category.strip()) > MAX_CATEGORY_CHARS:
            raise ExtractionUnavailable(f"{where}: 'category' must be a short string, not {category!r}")
        importance = item.get("importance")
        # bool is an int in Python; true/false is not an importance.
        if isinstance(importance, bool) or not isinstance(importance, int | float) or not math.isfinite(importance):
            raise ExtractionUnavailable(f"{where}: 'importance' must be a number from 0 to 1, not {importance!r}")
        source = item.get("source_sentence", item.get("source", ""))
        return ExtractedMemory(
            content=content,
            kind=kind.strip().lower(),
            category=category.strip().lower(),
            # A model that says 1.2 or -0.1 means "very" or "not": clamp rather than refuse.
            importance=min(1.0, max(0.0, float(importance))),
            source_sentence=source.strip() if isinstance(source, str) else "",
        )


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    # End on a sentence if one ends in the second half, else on a word.
    sentence_end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if sentence_end >= limit // 2:
        return cut[: sentence_end + 1]
    return cut.rsplit(" ", 1)[0] + "…"
