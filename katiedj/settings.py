"""KatieDJ settings: the one settings module, read from the environment.

Defaults give the embedded mode (SQLite file under ``var/``, in-process channel layer and
cache, Celery tasks run eagerly) so ``make run`` needs no external service. Production sets
``DATABASE_URL``, ``REDIS_URL``, ``SECRET_KEY``, ``DEBUG=false`` and ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from katiedj.outages import keep_reconnecting
from katiedj.redis_sentinel import (
    celery_broker_url,
    channel_layer_host,
    parse_sentinels,
    sentinel_kwargs,
)
from katiedj.secret_key import DEV_SECRET_KEY, read_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Core -------------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", True)

VAR_DIR = Path(os.environ.get("KATIEDJ_VAR_DIR", BASE_DIR / "var"))

# SECRET_KEY, else (DEBUG only) the key `make run` generated once in var/secret_key, else the
# public development key: fine for management commands and tests, refused by every server
# (katiedj.asgi), so nothing a server signs can be forged with it.
SECRET_KEY = os.environ.get("SECRET_KEY", "") or (
    (read_secret_key(VAR_DIR) if DEBUG else "") or DEV_SECRET_KEY
)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
PORT = env_int("PORT", 8000)
# Proxies (addresses or networks) whose X-Forwarded-For / X-Forwarded-Proto the server
# believes: the client's address (/metrics' loopback rule, per-address limits) and https
# (HSTS, secure cookies) come from them. Empty: believe no one, the peer is the client.
# Read by uvicorn itself in the Procfile and the image, by `manage.py serve` from here.
FORWARDED_ALLOW_IPS = env_list("FORWARDED_ALLOW_IPS", [])
# An HTTP request's whole body must arrive within this many seconds of its headers, or the
# server answers 408 and closes (slow-body clients hold connections; 0: no limit). uvicorn
# has no header timeout: the proxy's client_header_timeout covers headers.
REQUEST_BODY_TIMEOUT_SECONDS = float(os.environ.get("REQUEST_BODY_TIMEOUT_SECONDS", "") or 10)
# Browser origins allowed to open listener WebSockets ("*" for any); empty: ALLOWED_HOSTS.
WEBSOCKET_ALLOWED_ORIGINS = env_list("WEBSOCKET_ALLOWED_ORIGINS", [])
# Largest frame a listener may send (they have nothing to say; the server closes with 1009).
WEBSOCKET_MAX_INBOUND_BYTES = env_int("WEBSOCKET_MAX_INBOUND_BYTES", 4096)
# The server pings every listener this often and drops one that has not answered a ping
# within the timeout: dead peers are reaped even when TCP never reports them.
WEBSOCKET_PING_INTERVAL = float(os.environ.get("WEBSOCKET_PING_INTERVAL", "") or 20)
WEBSOCKET_PING_TIMEOUT = float(os.environ.get("WEBSOCKET_PING_TIMEOUT", "") or 20)
# A listener whose socket takes next to nothing for this many seconds (the server's buffer
# for it stays full) is reset: its slot, descriptor and buffers are freed. Unset: the
# server's ping timeout; 0: never (katiedj/ws_protocol.py).
WEBSOCKET_WRITE_TIMEOUT = (
    float(os.environ["WEBSOCKET_WRITE_TIMEOUT"])
    if os.environ.get("WEBSOCKET_WRITE_TIMEOUT")
    else None
)
# After the server closes a listener (4413, 4410, shutdown, ...), seconds the closing
# handshake may take; a close frame still stuck behind unsent bytes then is a reset.
WEBSOCKET_CLOSE_TIMEOUT = float(os.environ.get("WEBSOCKET_CLOSE_TIMEOUT", "") or 10)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "allauth",
    "allauth.account",
    "django_celery_beat",
    "katiedj",
    "accounts",
    "networks",
    "billing",
    "streaming",
    "simulator",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on every page: scripts from this origin only (no inline script).
    "katiedj.middleware.ContentSecurityPolicyMiddleware",
    # A NUL in a path names nothing: 404 before a view takes it to the database.
    "katiedj.middleware.NulInPathMiddleware",
    # Serves the admin's and portal's static assets in every mode; no web server needed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "katiedj.urls"
ASGI_APPLICATION = "katiedj.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The portal's templates first: they override third-party ones (allauth's layouts).
        "DIRS": [BASE_DIR / "frontend" / "templates"],
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

# --- Database ---------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "") or f"sqlite:///{VAR_DIR / 'katiedj.sqlite3'}",
        # Not persistent: under ASGI a request may run on a new thread, and a persistent
        # connection stays with its thread (measured: 64 page loads left one process holding
        # 31 PostgreSQL connections; a fuzz run exhausted the server's 100). The pool below
        # keeps reuse cheap instead.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
# Each process borrows PostgreSQL connections from its own bounded pool (psycopg_pool) and
# gives them back when Django closes them: at the end of a request, around each database hop
# of the connect path. Not opening one per call keeps paid connects fast (bench.targets
# paid, 1,000 connects on a busy 2-core host: 1.5-2.3 s pooled, 2.7 s with a new connection
# per call, 2.5-3.4 s with the former per-thread connections). Past DATABASE_POOL_MAX_SIZE busy
# connections a caller waits up to DATABASE_POOL_TIMEOUT seconds. 0 disables the pool
# (e.g. behind PgBouncer), and then DATABASE_CONN_MAX_AGE may keep connections instead.
DATABASE_POOL_MIN_SIZE = env_int("DATABASE_POOL_MIN_SIZE", 2)
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 10)
DATABASE_POOL_TIMEOUT = float(os.environ.get("DATABASE_POOL_TIMEOUT", "") or 10)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_MAX_SIZE:
    if DATABASES["default"]["CONN_MAX_AGE"]:
        raise ImproperlyConfigured(
            "DATABASE_CONN_MAX_AGE needs DATABASE_POOL_MAX_SIZE=0: pooled connections go back "
            "to the pool, they are not kept per thread."
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(DATABASE_POOL_MIN_SIZE, DATABASE_POOL_MAX_SIZE),
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the server read while a management command writes.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = "PRAGMA journal_mode=WAL;"
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
# A database that hangs or refuses must not stall publishing and listening. libpq gives up
# connecting after DATABASE_CONNECT_TIMEOUT_SECONDS (the pool's attempts too; psycopg's own
# default is 130 s), and PostgreSQL cancels a statement running past
# DATABASE_STATEMENT_TIMEOUT_MS (0: no limit; raise it for a migration that rewrites a large
# table; behind PgBouncer, which refuses the startup option, set 0 and configure it
# there). The publish and listen paths reach the database from DATABASE_LOOKUP_THREADS
# threads of their own (keep it at most DATABASE_POOL_MAX_SIZE) and wait at most
# DATABASE_LOOKUP_TIMEOUT_SECONDS for an answer, then answer 503 (WebSockets: close 1013).
DATABASE_CONNECT_TIMEOUT_SECONDS = env_int("DATABASE_CONNECT_TIMEOUT_SECONDS", 3)
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)
DATABASE_LOOKUP_THREADS = env_int("DATABASE_LOOKUP_THREADS", 4)
DATABASE_LOOKUP_TIMEOUT_SECONDS = float(os.environ.get("DATABASE_LOOKUP_TIMEOUT_SECONDS", "") or 3)
DATABASE_POOL_RECONNECT_SECONDS = float(os.environ.get("DATABASE_POOL_RECONNECT_SECONDS", "") or 5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    if DATABASE_CONNECT_TIMEOUT_SECONDS > 0:
        _pg_options.setdefault("connect_timeout", DATABASE_CONNECT_TIMEOUT_SECONDS)
    if DATABASE_STATEMENT_TIMEOUT_MS > 0:
        _statement_timeout = f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
        _pg_options["options"] = f"{_pg_options.get('options', '')} {_statement_timeout}".strip()
    # The pool retries a lost connection with a doubling delay for its reconnect_timeout
    # (psycopg's default: 5 min): after a 45 s outage its next attempt came 14 s after
    # PostgreSQL was back. Past DATABASE_POOL_RECONNECT_SECONDS it starts over at once
    # instead, so attempts are never more than a couple of seconds apart.
    if "pool" in _pg_options:
        _pg_options["pool"].setdefault("reconnect_timeout", DATABASE_POOL_RECONNECT_SECONDS)
        _pg_options["pool"].setdefault("reconnect_failed", keep_reconnecting)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "frontend:dashboard"

# --- Accounts (django-allauth): email login, verified addresses ---------------------------

ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
# Providers hold publisher keys: an unverified address cannot sign in.
ACCOUNT_EMAIL_VERIFICATION = os.environ.get("ACCOUNT_EMAIL_VERIFICATION", "mandatory")
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[KatieDJ] "
# Header-safe subjects, and accounts' own wording of the password-reset email.
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
# allauth's default ACCOUNT_RATE_LIMITS (failed logins per address and per IP, login posts
# per IP) also guard /admin/login/, with the same counters as /accounts/login/.
# Invitations are emails to addresses the inviter picks: at most this many per organization
# per hour, per invited address per day (whoever invites) and per inviting person per day (0
# lifts one). Counted in the cache (Redis in production); over a limit: 429 + Retry-After.
INVITATIONS_PER_ORGANIZATION_PER_HOUR = env_int("INVITATIONS_PER_ORGANIZATION_PER_HOUR", 20)
INVITATIONS_PER_ADDRESS_PER_DAY = env_int("INVITATIONS_PER_ADDRESS_PER_DAY", 3)
INVITATIONS_PER_INVITER_PER_DAY = env_int("INVITATIONS_PER_INVITER_PER_DAY", 50)

# Email: printed to the console in the embedded mode; SMTP when EMAIL_HOST is set.
# EMAIL_BACKEND overrides both (the browser tests use the file backend with EMAIL_FILE_PATH).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
if os.environ.get("EMAIL_FILE_PATH"):
    EMAIL_FILE_PATH = os.environ["EMAIL_FILE_PATH"]
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "KatieDJ <noreply@localhost>")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Redis: channel layer, cache, Celery broker -----------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
# Namespaces every Redis key, channel and cache entry, so several deployments (or test runs)
# can share one Redis.
REDIS_KEY_PREFIX = os.environ.get("REDIS_KEY_PREFIX", "katiedj")
# Connections per process for the publish and listen paths' own Redis clients.
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 64)
REDIS_POOL_TIMEOUT = float(os.environ.get("REDIS_POOL_TIMEOUT", "") or 10)
# Redis Sentinel (katiedj/redis_sentinel.py): with sentinels ("host:port,host:port") every
# Redis user asks them for the master of REDIS_SENTINEL_MASTER, and follows a failover.
# REDIS_URL then gives only the database, user, password and options of the master
# connections (its host:port is unused); without it, database 0, no password.
REDIS_SENTINELS = parse_sentinels(env_list("REDIS_SENTINELS", []))
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "") or "mymaster"
# For sentinels started with `requirepass` (the master's password is REDIS_URL's).
REDIS_SENTINEL_PASSWORD = os.environ.get("REDIS_SENTINEL_PASSWORD", "")
# Connect/read timeout towards one sentinel before the next one is asked.
REDIS_SENTINEL_TIMEOUT = float(os.environ.get("REDIS_SENTINEL_TIMEOUT", "") or 1)
REDIS_SENTINEL_KWARGS = sentinel_kwargs(REDIS_SENTINEL_PASSWORD, REDIS_SENTINEL_TIMEOUT)
if REDIS_SENTINELS and not REDIS_URL:
    # Redis mode is on whenever REDIS_URL is set; the host part only names the service.
    REDIS_URL = f"redis://{REDIS_SENTINEL_MASTER}/0"

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer: one Redis subscription per group per process, no per-channel
            # capacity that silently drops group messages, no per-consumer pooled connection.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [
                    channel_layer_host(
                        REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_KWARGS
                    )
                    if REDIS_SENTINELS
                    else REDIS_URL
                ],
                "prefix": REDIS_KEY_PREFIX,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
        }
    }
    if REDIS_SENTINELS:
        CACHES["default"]["OPTIONS"] = {
            "pool_class": "katiedj.redis_sentinel.CacheSentinelConnectionPool",
            "sentinels": REDIS_SENTINELS,
            "master_name": REDIS_SENTINEL_MASTER,
            "sentinel_kwargs": REDIS_SENTINEL_KWARGS,
        }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = (
    os.environ.get("CELERY_BROKER_URL", "")
    or (celery_broker_url(REDIS_URL, REDIS_SENTINELS) if REDIS_SENTINELS else REDIS_URL)
    or "memory://"
)
# A task a worker took stays invisible to other workers until it is acknowledged (after it
# ran: acks late) or until this many seconds pass; then the broker hands it out again. So a
# worker killed while holding tasks (kill -9, OOM, a lost host) has them run again after
# this long, and a task running longer than this runs twice (every task is idempotent). With
# Redis a task waiting for its retry is held too: retry countdowns stay below half of this
# (billing.tasks.retry_cap_seconds). Stored Stripe events are swept sooner (BILLING_SWEEP_*).
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_SECONDS", 1200),
}
if CELERY_BROKER_URL.startswith("sentinel://"):
    # kombu finds the master through the sentinels of the URL under this name.
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        master_name=REDIS_SENTINEL_MASTER, sentinel_kwargs=REDIS_SENTINEL_KWARGS
    )
    if REDIS_URL.startswith("rediss://"):
        CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
CELERY_RESULT_BACKEND = None
# Without a broker (embedded mode) tasks run in-process, synchronously.
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Sweeps finish what a lost task left undone (its worker killed, its retry lost, the broker
# down when it was queued): stored Stripe events never applied, networks no longer sold whose
# subscriptions were not ended. They run this often (seconds), take work the task that
# should have done it left untouched this long (seconds), at most this many items a run.
BILLING_SWEEP_SECONDS = float(os.environ.get("BILLING_SWEEP_SECONDS", "") or 60)
BILLING_SWEEP_GRACE_SECONDS = env_int("BILLING_SWEEP_GRACE_SECONDS", 300)
BILLING_SWEEP_BATCH = env_int("BILLING_SWEEP_BATCH", 100)
# A sweep not started within its interval is dropped (the next one is on its way), so beat
# sending while no worker runs piles nothing up (`expire_seconds`: django_celery_beat's name).
_SWEEP_OPTIONS = {"expire_seconds": max(1, int(BILLING_SWEEP_SECONDS))}
# Periodic work; Celery beat runs it in production, `manage.py serve` in the embedded mode.
CELERY_BEAT_SCHEDULE = {
    "rollup-usage": {
        "task": "networks.tasks.rollup_usage",
        "schedule": float(os.environ.get("USAGE_ROLLUP_SECONDS", "") or 60),
    },
    "flush-key-last-used": {
        "task": "networks.tasks.flush_key_last_used",
        "schedule": float(os.environ.get("LAST_USED_FLUSH_SECONDS", "") or 30),
    },
    "expire-lapsed-access": {"task": "billing.tasks.expire_lapsed_access", "schedule": 60.0},
    "reconcile-subscriptions": {
        "task": "billing.tasks.reconcile_subscriptions",
        "schedule": float(os.environ.get("RECONCILE_SECONDS", "") or 3600),
    },
    "sweep-webhook-events": {
        "task": "billing.tasks.sweep_webhook_events",
        "schedule": BILLING_SWEEP_SECONDS,
        "options": _SWEEP_OPTIONS,
    },
    "sweep-unsold-networks": {
        "task": "billing.tasks.sweep_unsold_networks",
        "schedule": BILLING_SWEEP_SECONDS,
        "options": _SWEEP_OPTIONS,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Beat reads its schedule from the database (simulations are added and removed while it runs);
# the static entries above are synced into it at start.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# The embedded mode starts a demo simulation on sample_net (`off` to disable).
DEMO_SIMULATION = os.environ.get("DEMO_SIMULATION", "on").lower() not in {"off", "0", "false"}
# The largest model a simulation may build (cells over all streets; an 80 x 80 grid at 1 s):
# a tiny time step or a forced cell count is refused, not allocated.
SIMULATION_MAX_CELLS = env_int("SIMULATION_MAX_CELLS", 1_000_000)
# Quotas of every organization's simulations (docs/simulator.md, "Quotas"), besides the cells
# above: steps per publish; the shortest time step (s); the work of one tick in cell updates,
# steps x (cells + 10,000 for a step's fixed cost), ~1 s of NumPy CPU at the default; the CPU
# seconds one tick may use (past them it is discarded and its simulation stopped); and the
# simulations an organization may run at once. A request checks them before building anything.
SIMULATION_MAX_STEPS_PER_PUBLISH = env_int("SIMULATION_MAX_STEPS_PER_PUBLISH", 3600)
SIMULATION_MIN_DT = float(os.environ.get("SIMULATION_MIN_DT", "") or 0.1)
SIMULATION_MAX_CELL_UPDATES_PER_TICK = env_int("SIMULATION_MAX_CELL_UPDATES_PER_TICK", 100_000_000)
SIMULATION_MAX_TICK_CPU_SECONDS = float(os.environ.get("SIMULATION_MAX_TICK_CPU_SECONDS", "") or 10)
SIMULATION_MAX_RUNNING_PER_ORGANIZATION = env_int("SIMULATION_MAX_RUNNING_PER_ORGANIZATION", 3)
# Celery's wall-clock limits on a tick or a model build: the soft one (the task is interrupted,
# its simulation stopped) leaves room for a build on a cold worker and a shared CPU; the hard
# one kills the worker child if even that does not end it.
SIMULATION_TICK_SOFT_TIME_LIMIT = 2 * SIMULATION_MAX_TICK_CPU_SECONDS + 5
SIMULATION_TICK_TIME_LIMIT = SIMULATION_TICK_SOFT_TIME_LIMIT + 10
# Ticks and model builds run on their own queue, taken by their own worker (platform/Procfile:
# `simulations`), so webhooks and sweeps on the default queue never wait behind one.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {"simulator.tasks.*": {"queue": "simulations"}}
# Towns: SUMO networks providers upload (never paths on this server). One upload may hold
# this many bytes of XML (gzip accepted, counted unzipped); an organization this many towns
# and bytes in all; an import is stopped past its time limit (seconds, in the worker); a
# signal phase longer than this (seconds) is shortened to it and reported. 8 MiB takes
# SUMO's Berlin OSM import (5.4 MB; parsed in 0.35 s and ~45 MB of memory).
TOWN_MAX_BYTES = env_int("TOWN_MAX_BYTES", 8 * 1024 * 1024)
TOWNS_PER_ORGANIZATION = env_int("TOWNS_PER_ORGANIZATION", 20)
TOWN_BYTES_PER_ORGANIZATION = env_int("TOWN_BYTES_PER_ORGANIZATION", 50 * 1024 * 1024)
TOWN_IMPORT_TIME_LIMIT_SECONDS = env_int("TOWN_IMPORT_TIME_LIMIT_SECONDS", 60)
TOWN_MAX_PHASE_SECONDS = env_int("TOWN_MAX_PHASE_SECONDS", 300)
# Each worker process keeps the built models of the simulations it ticks (a tick then only
# checks that the row holds what it saved): at most this many models and cells in all (a kept
# 83 x 83 grid, 10^6 cells: 20-35 MB of arrays plus its 27 MB street network).
SIMULATION_MODEL_CACHE_MODELS = env_int("SIMULATION_MODEL_CACHE_MODELS", 8)
SIMULATION_MODEL_CACHE_CELLS = env_int("SIMULATION_MODEL_CACHE_CELLS", 2_000_000)
# Where numba caches the compiled model kernels (`manage.py simulator_warm` fills it at image
# build). Unwritable (a read-only install): a private temp directory, seeded from this one when
# it holds kernels; nothing writable: compiled in memory by each process. Never an error.
SIMULATION_NUMBA_CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR", "") or str(VAR_DIR / "numba-cache")

# --- Publishing ------------------------------------------------------------------------

# Largest accepted publish body, in bytes (HTTP 413 above it).
PUBLISH_MAX_BYTES = env_int("PUBLISH_MAX_BYTES", 64 * 1024)
# How long a verified API key / network lookup is served from cache (seconds). Revocation
# and edits delete the cached entry at once; the TTL only bounds staleness after a crash.
PUBLISH_LOOKUP_CACHE_SECONDS = env_int("PUBLISH_LOOKUP_CACHE_SECONDS", 300)
# Each process also keeps answers in memory this long (seconds): the longest a revoked key
# can still publish through another process.
PUBLISH_LOCAL_CACHE_SECONDS = float(os.environ.get("PUBLISH_LOCAL_CACHE_SECONDS", "") or 1.0)

# Default per-key publish rate limit (messages per second, bursts of twice that); keys can
# override it. Answered with 429 and Retry-After.
PUBLISH_RATE_PER_SECOND = env_int("PUBLISH_RATE_PER_SECOND", 50)
# Refused API keys (unknown, revoked, expired, mistyped) per client address and window:
# past the limit the address gets 429 with Retry-After, without a database lookup, until
# the window (which starts at its first refusal) ends. 0 turns the limit off.
PUBLISH_KEY_FAILURES_PER_ADDRESS = env_int("PUBLISH_KEY_FAILURES_PER_ADDRESS", 20)
PUBLISH_KEY_FAILURE_WINDOW_SECONDS = env_int("PUBLISH_KEY_FAILURE_WINDOW_SECONDS", 60)
# Deepest nesting of arrays and objects accepted in any JSON body (publish and REST API).
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 64)

# /metrics (Prometheus): with a token, only its bearer may scrape; without, loopback only.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# Paid listening: entitlement tokens live this long at most (seconds); a past_due
# subscription keeps its rights this long (seconds) before they end.
ENTITLEMENT_TOKEN_SECONDS = env_int("ENTITLEMENT_TOKEN_SECONDS", 15 * 60)
BILLING_PAST_DUE_GRACE_SECONDS = env_int("BILLING_PAST_DUE_GRACE_SECONDS", 3 * 24 * 3600)
# A renewing subscription keeps its rights this long (seconds) past its period end, while
# Stripe charges the renewal and its webhook arrives (Stripe finalizes renewal invoices about
# an hour after the period ends).
BILLING_RENEWAL_LEEWAY_SECONDS = env_int("BILLING_RENEWAL_LEEWAY_SECONDS", 3 * 3600)
# Open connections one person may hold to one network (deters token sharing).
LISTENER_CONNECTIONS_PER_USER = env_int("LISTENER_CONNECTIONS_PER_USER", 5)
# Open listener connections one client address (IPv6: one /64) may hold across every network
# and process; 0: no limit. Bounds what one anonymous client can hold (~28 KiB a connection)
# while leaving room for a NAT'd office or household: many people, each a few tabs and
# devices, each paid network capped at 5 per person anyway. The address is the ASGI server's
# (behind a proxy, only as good as its trusted X-Forwarded-For).
LISTENER_CONNECTIONS_PER_ADDRESS = env_int("LISTENER_CONNECTIONS_PER_ADDRESS", 100)

# Stripe. Without a secret key billing is off: paid networks say so, and demo
# subscriptions are granted in the admin. STRIPE_API_BASE points tests at a local fake.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")
# Webhook events older than this (seconds) are refused as stale (replay protection).
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
# Each Stripe request waits at most this long (seconds) and is retried this many times on a
# connection error, 409, 429 or 5xx (with the same idempotency key) before giving up.
STRIPE_TIMEOUT_SECONDS = float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "") or 10)
STRIPE_NETWORK_RETRIES = env_int("STRIPE_NETWORK_RETRIES", 1)

# The embedded demo: organization, the ``sample_net`` network and a publisher key.
DEMO_API_KEY = os.environ.get("DEMO_API_KEY", "")
DEMO_NETWORK_SLUG = "sample_net"

# --- REST framework ---------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.PersonalTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Strict JSON (no NaN/Infinity, no lone surrogates, JSON_MAX_DEPTH): a 400, never a 500.
    "DEFAULT_PARSER_CLASSES": ["katiedj.strict_json.StrictJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "katiedj.api.NewestFirstCursorPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "katiedj.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "KatieDJ API",
    "DESCRIPTION": (
        "Manage organizations, networks, publisher keys and personal tokens. Authenticate "
        "with a portal session or `Authorization: Bearer <personal token>`. Publishing uses "
        "publisher keys on `/api/publish` and `/api/v1/networks/{slug}/messages` (see docs)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # Before the publish endpoints are added: those document their own errors.
        "katiedj.api.common_error_responses_hook",
        "katiedj.api.publish_endpoints_hook",
    ],
}

# --- Internationalization, static --------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Security in production -------------------------------------------------------------

# Whether a request came over https is the ASGI server's word (the scope's scheme): uvicorn
# takes X-Forwarded-Proto from FORWARDED_ALLOW_IPS only. No SECURE_PROXY_SSL_HEADER: Django
# would take that header from any client.
# HSTS is sent on https responses only; a year once DEBUG is off. Subdomains and preload
# commit the whole domain to https, so only the operator can turn them on.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- Logging ----------------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # Tokens and keys never reach the logs, whoever logs a URL or a header.
    "filters": {"redact_secrets": {"()": "katiedj.log_redaction.RedactSecrets"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["redact_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        # One line per task would drown the console: a simulation ticks every second.
        "celery.app.trace": {"level": "WARNING"},
        # The stripe library logs every request at INFO; billing logs what matters itself.
        "stripe": {"level": "WARNING"},
        # A warning per failed connection attempt; katiedj.outages says when the database
        # goes and comes back, once each.
        "psycopg.pool": {"level": "ERROR"},
    },
}
