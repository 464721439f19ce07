"""The admin: pages that stay fast on a large table, writes through the services, keys shown once."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from memories.models import (
    ApiKey,
    HistoryAction,
    Memory,
    MemoryHistory,
    MemoryKind,
    Session,
    content_hash,
    hash_api_key,
)
from tests.factories import AccountWithKey, make_memory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:memories_memory_changelist")
# A value that could only appear on a page if a vector were rendered.
MARKER = 0.0421875


def _marker_vector() -> np.ndarray:
    return np.full(384, MARKER, dtype=np.float32)


def _change_url(memory: Memory) -> str:
    return reverse("admin:memories_memory_change", args=[memory.pk])


def _insert_memories(account: AccountWithKey, count: int, *, analyze: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO memories_memory (id, account_id, namespace, user_id, kind, category, content, content_hash,
                tags, metadata, importance, pinned, access_count, created_at, updated_at, embedding_model)
            SELECT gen_random_uuid(), %s, 'default', 'user' || (g %% 50), 'fact', '', 'memory number ' || g,
                md5(g::text), '{}', '{}', 0.5, false, 0, now() - g * interval '1 minute', now(), ''
            FROM generate_series(1, %s) g
            """,
            [account.account.id, count],
        )
        if analyze:
            cursor.execute("ANALYZE memories_memory")


def _shown_count(html: str) -> int:
    match = re.search(r"(\d+) memor(?:y|ies)\b", html)
    assert match, "no result count on the page"
    return int(match.group(1))


def _counts_of_memories(queries: list[dict[str, Any]]) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "memories_memory" in q["sql"]]


def _edit_data(memory: Memory, **overrides: Any) -> dict[str, Any]:
    """The change form as the browser posts it: every editable field, and the read-only inline's empty formset."""
    data: dict[str, Any] = {
        "kind": memory.kind,
        "category": memory.category,
        "key": memory.key or "",
        "content": memory.content,
        "tags": ",".join(memory.tags),
        "metadata": "{}",
        "importance": str(memory.importance),
        "expires_at_0": "",
        "expires_at_1": "",
        "history-TOTAL_FORMS": "0",
        "history-INITIAL_FORMS": "0",
        "history-MIN_NUM_FORMS": "0",
        "history-MAX_NUM_FORMS": "1000",
    }
    if memory.pinned:
        data["pinned"] = "on"
    data.update(overrides)
    return data


# -- changelist ---------------------------------------------------------------------------------------


def test_changelist_shows_short_content_and_never_the_vector(admin_client: Client, account: AccountWithKey) -> None:
    long_content = "The user is planning a trip to Lisbon in May and wants a quiet hotel near the river, " * 3
    make_memory(account.account, long_content, embedding=_marker_vector(), embedding_model="all-MiniLM-L6-v2")

    response = admin_client.get(CHANGELIST)

    html = response.content.decode()
    assert response.status_code == 200
    assert "The user is planning a trip to Lisbon in May and wants a quiet hotel near the…" in html
    assert long_content.strip() not in html
    assert str(MARKER) not in html


def test_changelist_of_a_large_table_does_not_count_it(admin_client: Client, account: AccountWithKey) -> None:
    _insert_memories(account, 3_000, analyze=True)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    assert _counts_of_memories(queries.captured_queries) == []
    # The count shown is pg_class's estimate: close, not counted.
    assert abs(_shown_count(response.content.decode()) - 3_000) < 300
    # Nor does any query read the vectors.
    page_query = next(q["sql"] for q in queries.captured_queries if "LIMIT 100" in q["sql"])
    assert '"memories_memory"."embedding"' not in page_query


def test_stale_estimate_of_a_now_small_table_is_not_trusted(admin_client: Client, account: AccountWithKey) -> None:
    _insert_memories(account, 3_000, analyze=True)
    Memory.objects.exclude(pk__in=Memory.objects.values("pk")[:3]).delete()

    response = admin_client.get(CHANGELIST)

    assert _shown_count(response.content.decode()) == 3


def test_filtered_changelist_counts_small_results_exactly(admin_client: Client, account: AccountWithKey) -> None:
    _insert_memories(account, 3_000, analyze=True)
    for content in ("tea", "coffee"):
        make_memory(account.account, content, user_id="alice")

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, {"q": "alice"})

    assert _shown_count(response.content.decode()) == 2
    # Even the exact count stops early rather than counting the whole match.
    assert all("LIMIT" in sql for sql in _counts_of_memories(queries.captured_queries))


def test_search_by_memory_id_finds_that_memory(admin_client: Client, account: AccountWithKey) -> None:
    wanted = make_memory(account.account, "wanted")
    make_memory(account.account, "other")

    response = admin_client.get(CHANGELIST, {"q": str(wanted.pk)})

    html = response.content.decode()
    assert ">wanted<" in html
    assert ">other<" not in html


def test_namespace_filter_offers_every_namespace(
    admin_client: Client, account: AccountWithKey, other_account: AccountWithKey
) -> None:
    make_memory(account.account, "a", namespace="work")
    make_memory(account.account, "b", namespace="default")
    make_memory(other_account.account, "c", namespace="travel")

    response = admin_client.get(CHANGELIST)
    filtered = admin_client.get(CHANGELIST, {"namespace": "travel"})

    html = response.content.decode()
    for namespace in ("work", "default", "travel"):
        assert f"?namespace={namespace}" in html
    assert ">c<" in filtered.content.decode()
    assert ">a<" not in filtered.content.decode()


def test_embedding_filter_separates_pending_and_other_models(admin_client: Client, account: AccountWithKey) -> None:
    make_memory(account.account, "still pending")
    make_memory(account.account, "current model", embedding=_marker_vector(), embedding_model="all-MiniLM-L6-v2")
    make_memory(account.account, "old model", embedding=_marker_vector(), embedding_model="old-model-v1")

    pending = admin_client.get(CHANGELIST, {"embedding": "pending"}).content.decode()
    other = admin_client.get(CHANGELIST, {"embedding": "other"}).content.decode()

    assert ">still pending<" in pending
    assert ">current model<" not in pending
    assert ">old model<" in other
    assert ">current model<" not in other
    assert ">still pending<" not in other


# -- change form ------------------------------------------------------------------------------------


def test_change_form_shows_the_embedding_as_model_and_size(admin_client: Client, account: AccountWithKey) -> None:
    embedded = make_memory(account.account, "embedded", embedding=_marker_vector(), embedding_model="all-MiniLM-L6-v2")
    pending = make_memory(account.account, "pending one")

    embedded_html = admin_client.get(_change_url(embedded)).content.decode()
    pending_html = admin_client.get(_change_url(pending)).content.decode()

    assert "all-MiniLM-L6-v2 · 384 dims" in embedded_html
    assert str(MARKER) not in embedded_html
    assert 'name="embedding"' not in embedded_html
    assert 'name="content_hash"' not in embedded_html
    assert 'name="search_vector"' not in embedded_html
    assert '<div class="readonly">pending</div>' in pending_html


def test_editing_content_goes_through_the_service(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "User prefers tea", tags=["drinks"])

    response = admin_client.post(_change_url(memory), _edit_data(memory, content="User prefers coffee"))

    assert response.status_code == 302
    memory.refresh_from_db()
    assert memory.content == "User prefers coffee"
    assert memory.content_hash == content_hash("User prefers coffee")
    # The service re-embeds changed content.
    assert memory.embedding is not None
    assert memory.embedding_model
    (entry,) = MemoryHistory.objects.filter(memory=memory)
    assert entry.action == HistoryAction.UPDATE
    assert entry.old_content == "User prefers tea"
    assert entry.new_content == "User prefers coffee"
    assert entry.actor == "admin:admin"
    # Only what changed is recorded: the unchanged tags and the rest are not.
    assert entry.changes == {}


def test_editing_other_fields_records_just_those(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "User prefers tea")

    admin_client.post(_change_url(memory), _edit_data(memory, importance="0.9", tags="drinks,morning"))

    memory.refresh_from_db()
    assert memory.importance == 0.9
    assert memory.tags == ["drinks", "morning"]
    assert memory.embedding is None  # content unchanged: nothing to re-embed
    (entry,) = MemoryHistory.objects.filter(memory=memory)
    assert entry.old_content is None
    assert entry.changes == {"importance": [0.5, 0.9], "tags": [[], ["drinks", "morning"]]}


def test_invalid_edit_is_refused_on_the_form(admin_client: Client, account: AccountWithKey, settings: Any) -> None:
    settings.MEMORY = {**settings.MEMORY, "MAX_CONTENT_CHARS": 20}
    memory = make_memory(account.account, "User prefers tea")

    too_long = admin_client.post(_change_url(memory), _edit_data(memory, content="x" * 21))
    out_of_range = admin_client.post(_change_url(memory), _edit_data(memory, importance="1.5"))

    assert too_long.status_code == 200
    assert "errornote" in too_long.content.decode()
    assert out_of_range.status_code == 200
    assert "errornote" in out_of_range.content.decode()
    memory.refresh_from_db()
    assert memory.content == "User prefers tea"
    assert memory.importance == 0.5
    assert not MemoryHistory.objects.exists()


def test_key_clash_is_a_form_error_not_a_crash(admin_client: Client, account: AccountWithKey) -> None:
    make_memory(account.account, "Lives in Paris", category="home", key="city")
    memory = make_memory(account.account, "Lives in Lyon", category="home")

    response = admin_client.post(_change_url(memory), _edit_data(memory, key="city"))

    assert response.status_code == 200
    assert "Another memory of this user has this category and key." in response.content.decode()
    memory.refresh_from_db()
    assert memory.key is None


def test_history_inline_is_newest_first_and_bounded(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "User prefers tea")
    start = timezone.now() - timedelta(days=1)
    MemoryHistory.objects.bulk_create(
        MemoryHistory(
            memory=memory,
            account=account.account,
            action=HistoryAction.UPDATE,
            actor=f"system:{n:03d}",
            created_at=start + timedelta(minutes=n),
        )
        for n in range(1, 56)
    )

    html = admin_client.get(_change_url(memory)).content.decode()

    assert html.index("system:055") < html.index("system:054")
    assert "system:006" in html
    assert "system:005" not in html
    assert 'name="history-0-actor"' not in html  # read-only: nothing to post back


def test_admins_cannot_add_memories(admin_client: Client) -> None:
    assert admin_client.get(reverse("admin:memories_memory_add")).status_code == 403


def test_delete_goes_through_the_service(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "Forget me")

    response = admin_client.post(reverse("admin:memories_memory_delete", args=[memory.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Memory.objects.filter(pk=memory.pk).exists()
    (entry,) = MemoryHistory.objects.filter(memory_id=memory.pk)
    assert entry.action == HistoryAction.DELETE
    assert entry.old_content == "Forget me"
    assert entry.actor == "admin:admin"


def test_delete_selected_goes_through_the_service(admin_client: Client, account: AccountWithKey) -> None:
    memories = [make_memory(account.account, f"memory {n}") for n in range(3)]

    admin_client.post(
        CHANGELIST, {"action": "delete_selected", "post": "yes", "_selected_action": [str(m.pk) for m in memories]}
    )

    assert not Memory.objects.exists()
    assert MemoryHistory.objects.filter(action=HistoryAction.DELETE).count() == 3


# -- actions ----------------------------------------------------------------------------------------


def test_pin_action_pins_through_the_service(admin_client: Client, account: AccountWithKey) -> None:
    unpinned = make_memory(account.account, "pin me")
    already = make_memory(account.account, "already pinned", pinned=True)

    response = admin_client.post(
        CHANGELIST, {"action": "pin", "_selected_action": [str(unpinned.pk), str(already.pk)]}, follow=True
    )

    unpinned.refresh_from_db()
    assert unpinned.pinned
    (entry,) = MemoryHistory.objects.all()
    assert entry.memory_id == unpinned.pk
    assert entry.changes == {"pinned": [False, True]}
    assert entry.actor == "admin:admin"
    assert "Pinned 1 memory." in response.content.decode()


def test_unpin_action_unpins(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "unpin me", pinned=True)

    admin_client.post(CHANGELIST, {"action": "unpin", "_selected_action": [str(memory.pk)]})

    memory.refresh_from_db()
    assert not memory.pinned
    assert MemoryHistory.objects.get(memory=memory).changes == {"pinned": [True, False]}


def test_reembed_action_embeds_the_selected_memories(admin_client: Client, account: AccountWithKey) -> None:
    pending = make_memory(account.account, "The user's dog is called Rex")
    untouched = make_memory(account.account, "Not selected")

    admin_client.post(CHANGELIST, {"action": "reembed", "_selected_action": [str(pending.pk)]})

    pending.refresh_from_db()
    untouched.refresh_from_db()
    assert pending.embedding is not None
    assert pending.embedding_model
    assert untouched.embedding is None


# -- sessions ---------------------------------------------------------------------------------------


def test_session_pages_show_counts_summary_and_memories(admin_client: Client, account: AccountWithKey) -> None:
    session = Session.objects.create(
        account=account.account,
        external_id="chat-42",
        user_id="u1",
        summary="Talked about a trip to Lisbon.",
        summary_embedding=_marker_vector(),
    )
    for n in range(3):
        make_memory(account.account, f"fact number {n} from the chat", session=session, kind=MemoryKind.FACT)
    make_memory(account.account, "unrelated")

    listing = admin_client.get(reverse("admin:memories_session_changelist")).content.decode()
    page = admin_client.get(reverse("admin:memories_session_change", args=[session.pk])).content.decode()

    assert "chat-42" in listing
    assert '<td class="field-memory_count">3</td>' in listing
    assert "Talked about a trip to Lisbon." in page
    assert "384 dims" in page
    assert str(MARKER) not in page
    assert "fact number 2 from the chat" in page
    assert "unrelated" not in page


def test_memory_page_links_its_session_without_loading_the_summary_vector(
    admin_client: Client, account: AccountWithKey
) -> None:
    session = Session.objects.create(
        account=account.account, external_id="chat-7", user_id="u1", summary_embedding=_marker_vector()
    )
    memory = make_memory(account.account, "from the chat", session=session)

    with CaptureQueriesContext(connection) as queries:
        html = admin_client.get(_change_url(memory)).content.decode()

    assert reverse("admin:memories_session_change", args=[session.pk]) in html
    assert "chat-7 (u1)" in html
    assert not [q["sql"] for q in queries.captured_queries if "summary_embedding" in q["sql"]]


# -- accounts and keys ------------------------------------------------------------------------------


def test_account_page_lists_keys_without_their_hash(admin_client: Client, account: AccountWithKey) -> None:
    html = admin_client.get(reverse("admin:memories_account_change", args=[account.account.pk])).content.decode()

    assert account.key.prefix in html
    assert account.key.key_hash not in html


def test_adding_a_key_shows_it_once_and_stores_only_its_hash(admin_client: Client, account: AccountWithKey) -> None:
    response = admin_client.post(
        reverse("admin:memories_apikey_add"), {"account": account.account.pk, "name": "ci"}, follow=True
    )

    match = re.search(r"mp_[A-Za-z0-9_\-]{20,}", response.content.decode())
    assert match, "the new key is not on the page"
    raw_key = match.group(0)
    key = ApiKey.objects.get(name="ci")
    assert key.account == account.account
    assert key.key_hash == hash_api_key(raw_key)
    assert key.prefix == raw_key[: len(key.prefix)]
    stored = [str(value) for row in ApiKey.objects.values() for value in row.values()]
    stored += [str(value) for row in LogEntry.objects.values() for value in row.values()]
    assert not any(raw_key in value for value in stored)
    # Shown once: the next page no longer has it.
    again = admin_client.get(reverse("admin:memories_apikey_changelist"))
    assert raw_key not in again.content.decode()


def test_revoke_action_revokes_only_active_keys(admin_client: Client, account: AccountWithKey) -> None:
    earlier = timezone.now() - timedelta(days=3)
    old, _ = ApiKey.generate(account=account.account, name="old")
    ApiKey.objects.filter(pk=old.pk).update(revoked_at=earlier)

    admin_client.post(
        reverse("admin:memories_apikey_changelist"),
        {"action": "revoke", "_selected_action": [str(account.key.pk), str(old.pk)]},
    )

    account.key.refresh_from_db()
    old.refresh_from_db()
    assert account.key.revoked_at is not None
    assert old.revoked_at == earlier


# -- history ----------------------------------------------------------------------------------------


def test_history_admin_is_read_only(admin_client: Client, account: AccountWithKey) -> None:
    memory = make_memory(account.account, "tea")
    entry = MemoryHistory.objects.create(
        memory=memory, account=account.account, action=HistoryAction.CREATE, new_content="tea", actor="api:k"
    )
    change_url = reverse("admin:memories_memoryhistory_change", args=[entry.pk])

    listing = admin_client.get(reverse("admin:memories_memoryhistory_changelist"))
    add = admin_client.post(reverse("admin:memories_memoryhistory_add"), {"action": "create", "actor": "x"})
    change = admin_client.post(change_url, {"action": "delete", "actor": "x"})
    delete = admin_client.post(reverse("admin:memories_memoryhistory_delete", args=[entry.pk]), {"post": "yes"})

    assert listing.status_code == 200
    assert "api:k" in listing.content.decode()
    assert add.status_code == 403
    assert change.status_code == 403
    assert delete.status_code == 403
    entry.refresh_from_db()
    assert (entry.action, entry.actor) == (HistoryAction.CREATE, "api:k")
    assert MemoryHistory.objects.count() == 1
