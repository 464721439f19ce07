from django.db import migrations

import memories.vectors


class Migration(migrations.Migration):
    """Embeddings stored as halfvec(384), 16-bit floats, instead of vector(384).

    A memory row with a 32-bit vector was about 2 KB, past PostgreSQL's TOAST
    threshold for a quarter of the rows, whose vectors an exact search then
    fetched out of line one by one; as halfvec no row is toasted and a page
    holds more rows (three at fillfactor 50, against two before) (memories.vectors has the measurements).

    The HNSW index is dropped here, with its vector operator class, and built
    again for halfvec by 0014 without blocking writes. Between the two, large
    users' searches compare every row (correct, slower). Changing the column
    type rewrites the table under an exclusive lock: 131,000 memories took
    4.0 s on the bench machine; the README's Production section says how to
    plan it.

    The rewrite packs pages at fillfactor 50 (it was 60, 0012): with rows of
    about 1.2 KB instead of 2 KB a page at 60 holds four rows and room for
    only two or three new versions, so a flush of read counts that updates
    every row of a page moved some to other pages, adding an entry to every
    index. At 50 a page's free space is as large as its rows: each can be
    updated in place."""

    dependencies = [("memories", "0012_memory_fillfactor_60")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE memories_memory SET (fillfactor = 50)",
            reverse_sql="ALTER TABLE memories_memory SET (fillfactor = 60)",
        ),
        migrations.RemoveIndex(model_name="memory", name="memory_embedding_hnsw"),
        migrations.AlterField(
            model_name="memory",
            name="embedding",
            field=memories.vectors.EmbeddingField(blank=True, dimensions=384, null=True),
        ),
        migrations.AlterField(
            model_name="session",
            name="summary_embedding",
            field=memories.vectors.EmbeddingField(blank=True, dimensions=384, null=True),
        ),
    ]
