from __future__ import annotations

from django.apps import AppConfig


class PreloadConfig(AppConfig):
    """Warms users' hot memories into Redis (SPEC-038). Its features land with the preload issue."""

    name = "preload"
    verbose_name = "Preloading"
    default_auto_field = "django.db.models.BigAutoField"
