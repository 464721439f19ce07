import pgvector.django
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    """The HNSW index again, over the halfvec embeddings (0013), built without
    blocking reads or writes of the memory table."""

    atomic = False

    dependencies = [("memories", "0013_embedding_halfvec")]

    operations = [
        AddIndexConcurrently(
            model_name="memory",
            index=pgvector.django.HnswIndex(
                ef_construction=64,
                fields=["embedding"],
                m=16,
                name="memory_embedding_hnsw",
                opclasses=["halfvec_cosine_ops"],
            ),
        ),
    ]
