"""Extraction: turning a chat transcript into discrete memories and a session summary.

The interface is small on purpose: the background processor parses what a
client sent with `parse_transcript`, hands the messages to `get_extractor()`
and stores what comes back. Two extractors implement it: the deterministic,
offline `RuleExtractor` (the default) and the `LLMExtractor` over any
OpenAI-compatible chat API. An extractor either returns a complete, validated
`Extraction` or raises `ExtractionUnavailable`; the caller then keeps the
transcript and retries later, so no input is ever dropped.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = [
    "KINDS",
    "ExtractedMemory",
    "Extraction",
    "ExtractionUnavailable",
    "Extractor",
    "Message",
    "get_extractor",
    "parse_transcript",
    "reset_extractor",
]

# The discrete MemoryKind values of memories.models (not imported: this
# package must not load the models just to parse a transcript).
KINDS = frozenset({"fact", "preference", "event"})

ROLES = frozenset({"user", "assistant", "system"})


@dataclass(frozen=True)
class Message:
    """One turn of a chat: `role` is user, assistant or system."""

    role: str
    content: str


@dataclass(frozen=True)
class ExtractedMemory:
    """A durable statement about the user, written in the third person ("User prefers window seats")."""

    content: str
    kind: str
    category: str
    importance: float
    # The user's sentence the memory came from ("" when the extractor cannot tell).
    source_sentence: str = ""


@dataclass
class Extraction:
    memories: list[ExtractedMemory] = field(default_factory=list)
    summary: str = ""


class Extractor(Protocol):
    """Turns a transcript into memories and a summary; raises ExtractionUnavailable on a transient failure."""

    name: str

    def extract(self, messages: Sequence[Message]) -> Extraction: ...


class ExtractionUnavailable(Exception):
    """The extractor cannot answer now (LLM down, timed out, or answered garbage): keep the transcript, retry later."""


# -- parsing -----------------------------------------------------------------------------------------

# The speaker labels chat exports use, mapped onto the three roles. A label is
# only a label at the start of a line and followed by a colon.
_SPEAKERS = {
    "user": "user",
    "human": "user",
    "customer": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "bot": "assistant",
    "agent": "assistant",
    "chatbot": "assistant",
    "system": "system",
}
_SPEAKER_LINE = re.compile(
    r"^[ \t]*(?:\*\*)?("
    + "|".join(sorted(_SPEAKERS, key=len, reverse=True))
    + r")(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]?(.*)$",
    re.IGNORECASE,
)


def parse_transcript(session_data: str | list[dict[str, Any]]) -> list[Message]:
    """The messages of a transcript, given as chat text or as a list of {"role", "content"} dicts.

    Text: lines starting with a speaker label ("User:", "Assistant:", "Human:",
    "AI:", "Bot:", any case) open a turn and the lines after it continue that
    turn; text without any label is one user turn. Empty turns are dropped.
    Raises ValueError, saying what is wrong, for anything else.
    """
    if isinstance(session_data, str):
        return _parse_text(session_data)
    if isinstance(session_data, list):
        return _parse_list(session_data)
    raise ValueError(
        f"session_data must be the chat text or a list of {{role, content}} messages, not {type(session_data).__name__}"
    )


def _parse_text(text: str) -> list[Message]:
    turns: list[tuple[str, list[str]]] = []
    preamble: list[str] = []
    for line in text.splitlines():
        match = _SPEAKER_LINE.match(line)
        if match:
            turns.append((_SPEAKERS[match.group(1).lower()], [match.group(2)]))
        elif turns:
            turns[-1][1].append(line)
        else:
            preamble.append(line)
    if not turns:
        content = text.strip()
        return [Message("user", content)] if content else []
    # Lines before the first label belong to nobody in particular; the user sent the transcript.
    if "\n".join(preamble).strip():
        turns.insert(0, ("user", preamble))
    messages = []
    for role, lines in turns:
        content = "\n".join(lines).strip()
        if content:
            messages.append(Message(role, content))
    return messages


def _parse_list(items: list[Any]) -> list[Message]:
    messages = []
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"session_data[{position}] must be an object with role and content, not {_kind(item)}")
        role = item.get("role")
        content = item.get("content")
        if not isinstance(role, str) or role.strip().lower() not in ROLES:
            raise ValueError(f"session_data[{position}].role must be one of user, assistant, system; got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"session_data[{position}].content must be a string, not {_kind(content)}")
        if content.strip():
            messages.append(Message(role.strip().lower(), content.strip()))
    return messages


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- the process's extractor -------------------------------------------------------------------------

_lock = threading.Lock()
_extractor: Extractor | None = None


def _reinit_lock_in_child() -> None:
    # A parent thread may have held the lock at fork time; the child would wait for it forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)


def _build_extractor() -> Extractor:
    config = settings.EXTRACTION
    provider = config["PROVIDER"]
    if provider == "rules":
        from memories.extraction.rules import RuleExtractor

        return RuleExtractor(
            summary_max_sentences=int(config["SUMMARY_MAX_SENTENCES"]),
            summary_max_chars=int(config["SUMMARY_MAX_CHARS"]),
        )
    if provider == "openai":
        from memories.extraction.llm import LLMExtractor

        return LLMExtractor(
            base_url=str(config["BASE_URL"]),
            model=str(config["MODEL"]),
            api_key=str(config["API_KEY"] or ""),
            timeout=float(config["TIMEOUT"]),
            summary_max_chars=int(config["SUMMARY_MAX_CHARS"]),
            breaker_threshold=int(config["BREAKER_THRESHOLD"]),
            breaker_cooldown=float(config["BREAKER_COOLDOWN"]),
        )
    raise ImproperlyConfigured(f"Unknown EXTRACTION PROVIDER {provider!r}: expected 'rules' or 'openai'")


def get_extractor() -> Extractor:
    """The process's extractor, built from settings.EXTRACTION on first use."""
    extractor = _extractor
    if extractor is not None:
        return extractor
    return _get_extractor_locked()


def _get_extractor_locked() -> Extractor:
    global _extractor
    with _lock:
        if _extractor is None:
            _extractor = _build_extractor()
        return _extractor


def reset_extractor() -> None:
    """Forget the extractor: the next get_extractor() builds one from the current settings."""
    global _extractor
    with _lock:
        _extractor = None


@receiver(setting_changed)
def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "EXTRACTION":
        reset_extractor()
