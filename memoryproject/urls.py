from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from memoryproject import health, prometheus

urlpatterns = [
    path("admin/", admin.site.urls),
    path("memory/preload/", include("preload.api")),
    path("memory/", include("memories.api.urls")),
    path("api/memory/<str:vectorstore_name>/", include("memories.api.ingest")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("health", health.health, name="health"),
    path("ready", health.ready, name="ready"),
    # Not django_prometheus.urls: its view would leave the collectors out in multiprocess mode.
    path("metrics", prometheus.metrics, name="prometheus-django-metrics"),
]

# gunicorn cannot serve files and whitenoise is not a dependency: without a
# proxy in front (`make run`), the collected static files come from here.
# Not for a static URL on another host (a CDN).
if settings.SERVE_STATIC and not urlsplit(settings.STATIC_URL).netloc:
    _static_prefix = re.escape(urlsplit(settings.STATIC_URL).path.strip("/"))
    urlpatterns.append(
        re_path(rf"^{_static_prefix}/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}, name="static")
    )

handler400 = "memoryproject.errors.bad_request"
handler403 = "memoryproject.errors.permission_denied"
handler404 = "memoryproject.errors.not_found"
handler500 = "memoryproject.errors.server_error"
