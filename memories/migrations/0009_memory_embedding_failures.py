from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    """The background embedder records a row's own failures (a text the model
    rejects) and gives up after a number of attempts, instead of failing its
    whole batch forever. Rows it gave up on leave the queue's partial index.

    The new queue index is built before the old one is dropped, both without
    blocking writes: the memory table is the largest and busiest. Columns with
    a constant default are added without rewriting the table."""

    atomic = False

    dependencies = [("memories", "0008_session_updated_index")]

    operations = [
        migrations.AddField(
            model_name="memory",
            name="embedding_attempts",
            field=models.SmallIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="memory",
            name="embedding_error",
            field=models.TextField(blank=True, db_default="", default=""),
        ),
        migrations.AddField(
            model_name="memory",
            name="embedding_next_attempt_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="memory",
            name="embedding_failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        AddIndexConcurrently(
            model_name="memory",
            index=models.Index(
                condition=models.Q(("embedding__isnull", True), ("embedding_failed_at__isnull", True)),
                fields=["created_at"],
                name="memory_embedding_queue",
            ),
        ),
        AddIndexConcurrently(
            model_name="memory",
            index=models.Index(
                condition=models.Q(("embedding__isnull", True), ("embedding_failed_at__isnull", False)),
                fields=["embedding_failed_at"],
                name="memory_embedding_failed",
            ),
        ),
        RemoveIndexConcurrently(model_name="memory", name="memory_pending_embedding"),
    ]
