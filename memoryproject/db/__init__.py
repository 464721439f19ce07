"""The database backend (ENGINE "memoryproject.db"): Django's PostgreSQL backend with a circuit breaker; see base.py."""
