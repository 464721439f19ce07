from django.contrib.postgres.operations import CreateExtension
from django.db import migrations


class Migration(migrations.Migration):
    """pgvector must exist before the first vector column."""

    dependencies: list[tuple[str, str]] = []
    operations = [CreateExtension("vector")]
