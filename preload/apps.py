from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.signals import post_migrate, post_save


def _ensure_schedules(sender: AppConfig, *, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """After every `migrate` (and so every `make run`), the preload schedules match the configuration."""
    from django_q.models import Schedule

    from preload.models import PreloadConfig
    from preload.tasks import ensure_preload_schedules

    tables = connections[using].introspection.table_names()
    if Schedule._meta.db_table in tables and PreloadConfig._meta.db_table in tables:
        ensure_preload_schedules(using=using)


def _config_saved(sender: type, **kwargs: Any) -> None:
    """A changed refresh interval takes effect at once, not at the next migrate."""
    from preload.tasks import ensure_preload_schedules

    ensure_preload_schedules()


class PreloadAppConfig(AppConfig):
    """Warms users' hot memories into Redis (SPEC-038)."""

    name = "preload"
    verbose_name = "Preloading"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from preload.models import PreloadConfig

        post_migrate.connect(_ensure_schedules, sender=self, dispatch_uid="preload.ensure_schedules")
        post_save.connect(_config_saved, sender=PreloadConfig, dispatch_uid="preload.config_saved")
