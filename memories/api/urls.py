from __future__ import annotations

from django.urls import path

from memories.api import views

urlpatterns = [
    path("memories", views.MemoryCollectionView.as_view(), name="memory-list"),
    path("memories/batch", views.MemoryBatchView.as_view(), name="memory-batch"),
    path("memories/<uuid:memory_id>", views.MemoryDetailView.as_view(), name="memory-detail"),
    path("memories/<uuid:memory_id>/history", views.MemoryHistoryView.as_view(), name="memory-history"),
    path("relevant", views.RelevantView.as_view(), name="memory-relevant"),
    path("cache/stats", views.CacheStatsView.as_view(), name="cache-stats"),
    path("cache/clear", views.CacheClearView.as_view(), name="cache-clear"),
]
