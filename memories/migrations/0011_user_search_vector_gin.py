from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.operations import AddIndexConcurrently, BtreeGinExtension, RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    """Keyword candidates of a search come from a GIN index on (user_id,
    search_vector), whose posting lists are per user, instead of the
    search_vector index ANDed with the user's B-tree. btree_gin is a contrib
    extension that PostgreSQL marks trusted: a database owner may create it,
    as with pgvector.

    The new index is built before the old one is dropped, both without
    blocking writes: the memory table is the largest and busiest."""

    atomic = False

    dependencies = [("memories", "0010_embedding_binary")]

    operations = [
        BtreeGinExtension(),
        AddIndexConcurrently(
            model_name="memory",
            index=GinIndex(fields=["user_id", "search_vector"], name="memory_user_search_vector_gin"),
        ),
        RemoveIndexConcurrently(model_name="memory", name="memory_search_vector_gin"),
    ]
