from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


def _ensure_schedules(sender: AppConfig, *, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """After every `migrate` (and so every `make run`), the schedules match the settings."""
    from django_q.models import Schedule

    from memories.ingest_tasks import ensure_ingest_schedules
    from memories.tasks import ensure_access_flush_schedule, ensure_embed_sweep_schedule

    # `migrate` of another app to an early state can leave django-q's tables missing.
    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return
    ensure_access_flush_schedule(using=using)
    ensure_embed_sweep_schedule(using=using)
    ensure_ingest_schedules(using=using)


def _use_vector_type_after_migrate(sender: AppConfig, *, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    from memories.vectors import use_vector_type

    use_vector_type(sender, connection=connections[using])


class MemoriesConfig(AppConfig):
    name = "memories"
    verbose_name = "Memories"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # invalidation connects the receivers that invalidate cached authentications;
        # metrics registers the database gauges of /metrics in every process that serves it.
        from memories import invalidation, metrics  # noqa: F401
        from memories.vectors import use_vector_type

        # forking registers the fork hook: django-q2's workers are forked from a process that queried.
        # pool_metrics: under PROMETHEUS_MULTIPROC_DIR every process samples its own connection pools.
        from memoryproject import forking, pool_metrics  # noqa: F401

        pool_metrics.start()

        post_migrate.connect(_ensure_schedules, sender=self, dispatch_uid="memories.ensure_schedules")
        connection_created.connect(use_vector_type, dispatch_uid="memories.use_vector_type")
        # A connection opened before the migration that created the extension.
        post_migrate.connect(_use_vector_type_after_migrate, sender=self, dispatch_uid="memories.vector_after_migrate")
