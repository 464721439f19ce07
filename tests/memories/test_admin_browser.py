"""The admin in a real browser: headless Chromium, driven by Playwright, against a live server.

An operator logs in, finds a memory by searching, pins it with the changelist
action and the API then says it is pinned; the preload configuration, a raw
transcript and a django-q2 schedule open on their change pages. Screenshots
of each step go to test-artifacts/admin/ (git-ignored), for a person to look at.

The browser is Debian's Chromium at /usr/bin/chromium (Playwright's own
browser download cannot work on these machines). Where it or the playwright
package is missing the test is skipped, saying how to install them; under CI
(CI=true) it fails instead, since .ci/run installs the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django_q.models import Schedule
from pytest_django.live_server_helper import LiveServer

from memories.ingest import transcript_store
from memories.ingest_tasks import PROCESS_SCHEDULE, ensure_ingest_schedules
from memories.models import HistoryAction, Memory, MemoryHistory, RawTranscript, TranscriptStatus
from preload.models import PreloadConfig
from tests.factories import AccountWithKey, make_memory

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Committed data: the live server answers from its own thread and connection.
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "admin"
CHROMIUM = Path("/usr/bin/chromium")
# The probe's flags for this machine: without the networking ones Chromium keeps
# dialling Google's hosts, which the closed network refuses. Playwright adds
# --headless and, as it runs as root here, --no-sandbox.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Milliseconds: a step that fails should fail quickly, not at Playwright's 30 s default.
STEP_TIMEOUT_MS = 10_000
PASSWORD = "browser-test-password-1"  # a throwaway superuser of the test database

SEAT = "I always book a window seat when I fly"

# Straight to the live server, whatever HTTP_PROXY says.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _browser_missing() -> str | None:
    """Why no browser test can run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `make install` (it is pinned in requirements/dev.txt)"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"no Chromium at {CHROMIUM}: as root, `apt-get install -y --no-install-recommends chromium`"
            " (what .ci/run does; never `playwright install`, whose download cannot work here)"
        )
    return None


@pytest.fixture
def chromium_available() -> None:
    reason = _browser_missing()
    if reason is None:
        return
    # CI installs the browser (.ci/run): there, a missing one is a broken build, not a reason to skip.
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail(f"CI=true and the admin browser test cannot run: {reason}")
    pytest.skip(f"admin browser test needs a browser: {reason}")


@contextmanager
def _chromium_page() -> Iterator[Page]:
    """A fresh headless Chromium (its own new profile) and one page in it.

    While this is open, sync Playwright runs an asyncio loop in this thread:
    Django refuses ORM calls here then (SynchronousOnlyOperation), so the test
    reads the database before and after, and goes through HTTP in between.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            # Wide enough for every column of the memory changelist beside the admin's sidebars.
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _api_get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with _LOCAL.open(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


@dataclass
class Scene:
    """What the operator will look at, written before the browser starts."""

    username: str
    seat: Memory
    config: PreloadConfig
    transcript: RawTranscript
    schedule: Schedule


@pytest.fixture
def scene(account: AccountWithKey) -> Scene:
    username = "browser-admin"
    get_user_model().objects.create_superuser(username, "admin@example.com", PASSWORD)
    seat = make_memory(account.account, SEAT, user_id="alice", importance=0.6)
    # Others that the search must leave out.
    make_memory(account.account, "Alice is vegetarian", user_id="alice")
    make_memory(account.account, "My cat is called Miso", user_id="bob")
    config = PreloadConfig.objects.create(
        account=account.account,
        namespace="default",
        user_id="alice",
        enabled=True,
        max_memories_per_user=123,
        strategies=["recent", "important"],
    )
    transcript = transcript_store(
        account=account.account,
        namespace="default",
        user_id="alice",
        session_data="User: I always book a window seat.\nAssistant: Noted, a window seat it is.",
        session_id="trip-planning",
        metadata={"channel": "browser-test"},
    )
    # A transactional test's database was flushed by the one before it, and
    # post_migrate put the schedules back; ensuring it here does not depend on that.
    ensure_ingest_schedules()
    schedule = Schedule.objects.get(name=PROCESS_SCHEDULE)
    return Scene(username=username, seat=seat, config=config, transcript=transcript, schedule=schedule)


@pytest.fixture
def artifacts() -> Path:
    # Only this run's screenshots: a stale one must not pass for a new one.
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


def test_operator_pins_a_found_memory_in_the_browser_and_opens_the_job_pages(
    chromium_available: None, live_server: LiveServer, scene: Scene, account: AccountWithKey, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    base = live_server.url
    seat_id = str(scene.seat.pk)
    with _chromium_page() as page:
        # Log in through the admin's own form.
        page.goto(f"{base}{reverse('admin:index')}")
        page.locator("#id_username").fill(scene.username)
        page.locator("#id_password").fill(PASSWORD)
        page.locator("input[type=submit]").click()
        expect(page.locator("#site-name")).to_be_visible()
        expect(page.locator("#user-tools")).to_contain_text(scene.username)

        # Search the memories by words of the content.
        page.goto(f"{base}{reverse('admin:memories_memory_changelist')}")
        page.locator("#searchbar").fill("window seat")
        page.locator("#searchbar").press("Enter")
        page.wait_for_url("**q=window+seat**")
        rows = page.locator("#result_list tbody tr")
        expect(rows).to_have_count(1)
        row = rows.first
        expect(row.locator(".field-short_content")).to_have_text(SEAT)
        expect(row.locator("td.field-pinned img")).to_have_attribute("alt", "False")
        page.screenshot(path=artifacts / "1-search.png", full_page=True)

        # Pin it: tick the row, choose the action, Go.
        row.locator("input.action-select").check()
        page.locator("select[name=action]").select_option("pin")
        page.get_by_role("button", name="Go").click()
        expect(page.locator("ul.messagelist li.success")).to_have_text("Pinned 1 memory.")
        # The changelist comes back with the search kept and the row now pinned.
        row = page.locator("#result_list tbody tr").filter(has_text=SEAT)
        expect(row.locator("td.field-pinned img")).to_have_attribute("alt", "True")
        page.screenshot(path=artifacts / "2-pinned.png", full_page=True)

        # The API, with the account's own key, sees the pin and who made it.
        memory = _api_get(f"{base}/memory/memories/{seat_id}", account.raw_key)
        assert (memory["id"], memory["content"], memory["pinned"]) == (seat_id, SEAT, True)
        history = _api_get(f"{base}/memory/memories/{seat_id}/history", account.raw_key)
        entries = [(entry["action"], entry["actor"]) for entry in history["history"]]
        assert entries == [(HistoryAction.UPDATE, f"admin:{scene.username}")], history
        assert "pinned" in history["history"][0]["changes"], history

        # The preload configuration of that user, as stored.
        page.goto(f"{base}{reverse('admin:preload_preloadconfig_change', args=[scene.config.pk])}")
        expect(page.get_by_role("heading", name=str(scene.config))).to_be_visible()
        expect(page.locator("#id_max_memories_per_user")).to_have_value("123")
        expect(page.locator("#id_user_id")).to_have_value("alice")
        expect(page.locator("#id_strategies input[value=recent]")).to_be_checked()
        expect(page.locator("#id_strategies input[value=important]")).to_be_checked()
        expect(page.locator("#id_strategies input[value=trending]")).not_to_be_checked()
        page.screenshot(path=artifacts / "3-preload-config.png", full_page=True)

        # The queued transcript: read-only, with its status and text.
        page.goto(f"{base}{reverse('admin:memories_rawtranscript_change', args=[scene.transcript.pk])}")
        expect(page.locator("div.field-status .readonly")).to_have_text(str(TranscriptStatus.QUEUED.label))
        expect(page.locator("div.field-user_id .readonly")).to_have_text("alice")
        expect(page.locator("div.field-session .readonly")).to_contain_text("trip-planning")
        expect(page.locator("div.field-text .readonly")).to_contain_text("a window seat it is")
        page.screenshot(path=artifacts / "4-transcript.png", full_page=True)

        # django-q2's page of the transcript processing schedule.
        page.goto(f"{base}{reverse('admin:django_q_schedule_change', args=[scene.schedule.pk])}")
        expect(page.locator("#id_name")).to_have_value(PROCESS_SCHEDULE)
        expect(page.locator("#id_func")).to_have_value(scene.schedule.func)
        expect(page.locator("#id_minutes")).to_have_value("1")
        page.screenshot(path=artifacts / "5-schedule.png", full_page=True)

    # The browser is closed: the database may be read here again.
    scene.seat.refresh_from_db()
    assert scene.seat.pinned
    pin = MemoryHistory.objects.filter(memory_id=scene.seat.pk, action=HistoryAction.UPDATE).get()
    assert pin.actor == f"admin:{scene.username}"
    assert not Memory.objects.exclude(pk=scene.seat.pk).filter(pinned=True).exists()
    shots = sorted(path.name for path in artifacts.glob("*.png"))
    assert shots == ["1-search.png", "2-pinned.png", "3-preload-config.png", "4-transcript.png", "5-schedule.png"]
