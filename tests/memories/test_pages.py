from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from memories.models import Memory
from memories.pages import Page, decode_page, encode_page, page_of_records
from memories.records import memory_output, memory_to_record
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db


def test_a_page_holds_its_memories_output_and_reads_back_as_written(account: AccountWithKey) -> None:
    first = make_memory(account.account, "User likes tea\nand \u2028 scones", metadata={"k": [1, {"x": None}]})
    second = make_memory(account.account, "User likes chess")
    Memory.objects.filter(pk=second.pk).update(expires_at=datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC))
    records = [memory_to_record(Memory.objects.get(pk=m.pk)) for m in (second, first)]

    page = page_of_records(records, next_cursor="abc", preloaded=True)
    read = decode_page(encode_page(page))

    assert read == page
    assert read.ids == [str(second.pk), str(first.pk)]
    assert orjson.loads(read.results) == [memory_output(record) for record in records]
    assert read.expires_at == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_an_empty_page_reads_back_empty() -> None:
    page = decode_page(encode_page(page_of_records([], next_cursor=None)))

    assert page == Page(ids=[], results=b"[]", next_cursor=None, expires_at=None, preloaded=False)


def test_what_is_not_an_encoded_page_is_refused() -> None:
    with pytest.raises(ValueError, match="not an encoded page"):
        decode_page(orjson.dumps({"items": [], "next_cursor": None}))
