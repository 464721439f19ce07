"""A page of a user's memory list as it is cached: rendered once, served as it is.

A cached page used to hold its memories' records; every read parsed them all
(orjson, ~45 us for 50), turned each into the API's output (memory_output,
~60 us) and wrote them out again (~11 us): most of a cached list request
besides the framework. A page now holds that output already written, as one
JSON array, behind a small header with what a reader needs besides: the ids
(for access counting), the next cursor, the first expiry, and whether
preloading wrote it. A read parses the header alone and splices the array
into the response (memories.api.renderers.RenderedJSON).

Encoded: the header's JSON, a newline, the array's JSON. orjson never writes
a raw newline, so the first one ends the header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from memories.records import earliest_expiry, memory_output


@dataclass(frozen=True)
class Page:
    """A page of memory_list: its memories' ids and their API output, newest first."""

    ids: list[str]
    # The memories as the API shows them (memory_output), as one JSON array.
    results: bytes
    next_cursor: str | None
    # The first of its memories to expire: the page must not be served after it.
    expires_at: datetime | None = None
    # Written by preloading (counted as a preload hit when read).
    preloaded: bool = False


def page_of_records(records: Sequence[dict[str, Any]], *, next_cursor: str | None, preloaded: bool = False) -> Page:
    """The page of these memory records (memories.records), in their order."""
    return Page(
        ids=[record["id"] for record in records],
        results=orjson.dumps([memory_output(record) for record in records]),
        next_cursor=next_cursor,
        expires_at=earliest_expiry(records),
        preloaded=preloaded,
    )


def encode_page(page: Page) -> bytes:
    header = {
        "ids": page.ids,
        "next_cursor": page.next_cursor,
        "expires_at": page.expires_at.isoformat() if page.expires_at else None,
        "preloaded": page.preloaded,
    }
    return orjson.dumps(header) + b"\n" + page.results


def decode_page(raw: bytes) -> Page:
    header, newline, results = raw.partition(b"\n")
    if not newline:
        raise ValueError("not an encoded page: no header")
    fields = orjson.loads(header)
    expires_at = fields["expires_at"]
    return Page(
        ids=fields["ids"],
        results=results,
        next_cursor=fields["next_cursor"],
        expires_at=datetime.fromisoformat(expires_at) if expires_at else None,
        preloaded=fields["preloaded"],
    )
