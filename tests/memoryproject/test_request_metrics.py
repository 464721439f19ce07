from __future__ import annotations

import pytest
from django.http import HttpResponse
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from memoryproject.request_metrics import RequestMetricsMiddleware
from tests.metrics import Samples, scrape

pytestmark = pytest.mark.django_db

LATENCY = "django_http_requests_latency_seconds_by_view_method_count"
RESPONSES = "django_http_responses_total_by_status_view_method_total"


def _grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    def value(samples: Samples) -> float:
        return sum(value for (sample, found), value in samples.items() if sample == name and dict(found) == labels)

    return value(after) - value(before)


def test_each_response_is_counted_by_status_view_and_method_and_timed(api: APIClient) -> None:
    before = scrape()
    api.get("/memory/memories", {"user_id": "u1"})
    api.get("/memory/memories", {"user_id": "u1"})
    Client().get("/memory/memories", {"user_id": "u1"})  # no key
    after = scrape()

    assert _grew(before, after, RESPONSES, status="200", view="memory-list", method="GET") == 2
    assert _grew(before, after, RESPONSES, status="401", view="memory-list", method="GET") == 1
    assert _grew(before, after, LATENCY, view="memory-list", method="GET") == 3


def test_only_the_metrics_kept_are_exported() -> None:
    names = {name for name, _ in scrape()}

    assert "django_http_requests_latency_seconds_by_view_method_bucket" in names
    # django-prometheus's others are not registered, rather than exported as zeros.
    assert not {name for name in names if name.startswith("django_http_requests_before_middlewares")}
    assert not {name for name in names if name.startswith("django_http_responses_body_total_bytes")}


def test_an_exception_is_counted_once_and_its_response_timed_once() -> None:
    request = RequestFactory().get("/somewhere")
    middleware = RequestMetricsMiddleware(lambda request: HttpResponse(status=500))
    before = scrape()

    middleware.process_request(request)
    middleware.process_exception(request, ValueError("boom"))
    middleware.process_response(request, HttpResponse(status=500))
    after = scrape()

    assert _grew(before, after, "django_http_exceptions_total_by_type_total", type="ValueError") == 1
    assert _grew(before, after, LATENCY, view="<unnamed view>", method="GET") == 1
    assert _grew(before, after, RESPONSES, status="500", view="<unnamed view>", method="GET") == 1
