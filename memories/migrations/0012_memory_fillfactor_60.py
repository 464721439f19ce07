from django.db import migrations


class Migration(migrations.Migration):
    """More room on each page for the access-count flush's new row versions.

    A memory row is about 2 KB (its vector is 1.5 KB), so at fillfactor 80 a
    page holds three rows and room for one new version: a flush that updates
    two rows of a page in its transaction moves the second to another page,
    adding an entry to every index, the HNSW one included (about 1 ms each).
    At 60 a page holds two rows and room for two. Measured on a copy of the
    100,000 generated memories, three flushes of about 26,000 memories each
    (3,000 searches' reads, users picked 1/rank): at 80, 61 %, 74 % and 80 % of
    the updates stayed on their page, in 8.7, 6.1 and 4.7 s; at 60, 96 % each
    time, in 1.3-1.5 s. The heap starts 43 % larger (311 against 217 MB) but
    grows less (323 against 272 MB after the three flushes); the indexes end
    the same (231 against 235 MB).

    Only pages written from now on are filled to 60 %; `VACUUM FULL
    memories_memory` (which locks the table) or pg_repack rewrites the rest."""

    dependencies = [("memories", "0011_user_search_vector_gin")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE memories_memory SET (fillfactor = 60)",
            reverse_sql="ALTER TABLE memories_memory SET (fillfactor = 80)",
        )
    ]
