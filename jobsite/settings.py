"""Jobsite settings: one module, driven by the environment.

Every value can be set through an environment variable (or a `.env` file at the
project root); the defaults give a working development setup with an SQLite file
and Redis on 127.0.0.1:6379.
"""

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from jobs.schedules import beat_schedule
from jobsite import keys

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# https://docs.djangoproject.com/en/5.2/ref/settings/#debug
# Off unless asked for (`make run` and the test suite ask for it).
DEBUG = env.bool("DJANGO_DEBUG", default=False)

# https://docs.djangoproject.com/en/5.2/ref/settings/#secret-key
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    # Development: a random key made on first start and kept in var/secret_key.
    SECRET_KEY = keys.development_secret_key(VAR_DIR / "secret_key")
# API tokens are signed with a key of their own, by default one derived from SECRET_KEY.
JWT_SIGNING_KEY = env("JWT_SIGNING_KEY", default="") or keys.derive_key(
    SECRET_KEY, "jobsite.jwt-signing-key"
)

# https://docs.djangoproject.com/en/5.2/ref/settings/#allowed-hosts
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# A TLS-terminating proxy in front: only then are its X-Forwarded-Proto and the last
# NUM_PROXIES addresses of X-Forwarded-For believed (client addresses for rate limits
# and login lockouts).
BEHIND_PROXY = env.bool("DJANGO_BEHIND_PROXY", default=False)
NUM_PROXIES = env.int("NUM_PROXIES", default=1 if BEHIND_PROXY else 0)
if NUM_PROXIES and not BEHIND_PROXY:
    raise ImproperlyConfigured("NUM_PROXIES is set but DJANGO_BEHIND_PROXY is off")
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "axes",
    "drf_spectacular",
    "django_celery_beat",
    "django_celery_results",
    "django_tasks",
    "jobs",
    "reports",
    "notes",
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns a login lockout into a 429 answer (jobsite.signin.lockout_response).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "jobsite.urls"
WSGI_APPLICATION = "jobsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# https://django-environ.readthedocs.io/en/latest/types.html#environ-env-db-url
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # Web, workers and beat share one SQLite file: WAL lets readers run beside the
    # writer, IMMEDIATE transactions take the write lock up front instead of failing
    # half-way, and the timeout makes writers wait for each other.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {
        "NAME": env("DATABASE_TEST_NAME", default=str(VAR_DIR / "test.sqlite3"))
    }
else:
    if env("DATABASE_TEST_NAME", default=""):
        DATABASES["default"]["TEST"] = {"NAME": env("DATABASE_TEST_NAME")}
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A database that does not answer fails the request (503) in seconds, not minutes.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=3)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

# The cache and the per-user API rate limit give up on Redis after this many seconds;
# after a failure the rate limit skips Redis (lets requests through) for
# CACHE_BREAKER_SECONDS. The token endpoint's limit, which refuses when Redis cannot
# be asked, keeps its own 1 s.
CACHE_TIMEOUT = env.float("CACHE_TIMEOUT", default=0.2)
CACHE_BREAKER_SECONDS = env.float("CACHE_BREAKER_SECONDS", default=2.0)

# https://docs.djangoproject.com/en/5.2/topics/cache/#redis
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env("CACHE_URL", default=REDIS_URL),
        "KEY_PREFIX": "jobsite",
        "OPTIONS": {"socket_connect_timeout": CACHE_TIMEOUT, "socket_timeout": CACHE_TIMEOUT},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# axes refuses sign-ins while a username or an address is locked out; ModelBackend checks
# the password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed sign-ins (login page, admin login, token endpoint), counted in the database:
# AXES_FAILURE_LIMIT failures for one username, or from one client address, lock that
# username or address out for AXES_COOLOFF_MINUTES. A success clears that username's
# failures from that address.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "jobsite.signin.LoginAttemptHandler"
AXES_CLIENT_IP_CALLABLE = "jobsite.throttles.client_address"
AXES_LOCKOUT_CALLABLE = "jobsite.signin.lockout_response"
AXES_VERBOSE = False
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/reports/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(BASE_DIR / "media")))
# Notes images: Cloudinary when CLOUDINARY_URL is set (cloudinary://key:secret@cloud),
# else Django storage under MEDIA_ROOT.
CLOUDINARY_URL = env("CLOUDINARY_URL", default="")
CLOUDINARY_FOLDER = env("CLOUDINARY_FOLDER", default="jobsite")
# Upload limits: bytes (413 while the body streams in) and pixels (read from the header).
NOTES_IMAGE_MAX_BYTES = env.int("NOTES_IMAGE_MAX_BYTES", default=5 * 1024 * 1024)
NOTES_IMAGE_MAX_PIXELS = env.int("NOTES_IMAGE_MAX_PIXELS", default=40_000_000)
NOTES_CLEANUP_BATCH = env.int("NOTES_CLEANUP_BATCH", default=50)
NOTES_CLEANUP_GRACE_HOURS = env.float("NOTES_CLEANUP_GRACE_HOURS", default=24.0)
# A burst of saves of one page within this many seconds is written once, with the last
# save's content (notes.save_page is unique per page, debounced).
NOTES_SAVE_DEBOUNCE = env.float("NOTES_SAVE_DEBOUNCE", default=2.0)
# Links in e-mails (a report's download link) start with this.
SITE_URL = env("SITE_URL", default="http://127.0.0.1:8000")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Request bodies: https://docs.djangoproject.com/en/5.2/ref/settings/#data-upload-max-memory-size
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("REQUEST_MAX_BYTES", default=2 * 1024 * 1024)

# E-mail: https://docs.djangoproject.com/en/5.2/topics/email/#email-backends
EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    default="django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Jobsite <jobsite@localhost>")

# Django REST Framework: https://www.django-rest-framework.org/api-guide/settings/
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "jobsite.auth.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "jobsite.api.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["jobsite.throttles.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "user": env("RATE_LIMIT_USER", default="6000/min"),
        "token": env("RATE_LIMIT_TOKEN", default="30/min"),
    },
    "NUM_PROXIES": NUM_PROXIES,
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )

# JWT: https://django-rest-framework-simplejwt.readthedocs.io/en/latest/settings.html
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env.int("JWT_ACCESS_LIFETIME", default=60 * 15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(
        seconds=env.int("JWT_REFRESH_LIFETIME", default=60 * 60 * 24)
    ),
    "SIGNING_KEY": JWT_SIGNING_KEY,
    # Each refresh token works once: refreshing blacklists it and issues a new one.
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "AUTH_TOKEN_CLASSES": ("jobsite.auth.AccessToken",),
}

# OpenAPI: https://drf-spectacular.readthedocs.io/en/latest/settings.html
SPECTACULAR_SETTINGS = {
    "TITLE": "Jobsite API",
    "DESCRIPTION": "Create, watch, cancel and retry background jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Choice sets whose fields share a name with another's ("status").
    "ENUM_NAME_OVERRIDES": {
        "DeliveryStatusEnum": "webhooks.models.DeliveryStatus",
        "JobStatusEnum": "jobs.models.Status",
        "OnDependencyFailureEnum": "jobs.models.OnDependencyFailure",
        "ReportKindEnum": "reports.models.Kind",
        "StreamEventEnum": "jobs.live_api.STREAM_EVENTS",
    },
    # Every operation documents the JSON error answers it may give (jobsite/openapi.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "jobsite.openapi.document_errors",
    ],
}

# Celery: https://docs.celeryq.dev/en/stable/userguide/configuration.html
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
# On Redis, kombu's transport with fewer commands per message (jobs/broker.py).
if CELERY_BROKER_URL.startswith("redis://"):
    CELERY_BROKER_TRANSPORT = "jobs.broker:Transport"
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=60 * 60 * 24)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TRACK_STARTED = True
# Celery's Django fix-up closes every database connection before and after every task
# unless this is set; jobs.tasks recycles them the way Django does per request instead
# (CONN_MAX_AGE, broken connections), which saves a new connection per task.
CELERY_DB_REUSE_MAX = 2**31
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=60 * 60)
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=4)
# Task events feed Flower's live view; switch off to save broker traffic.
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=True)
# ... sent in batches, one message per tenth of a second at most (jobs/consumer.py).
CELERY_WORKER_CONSUMER = "jobs.consumer:Consumer"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=2.0)
# Publishing gives up fast when the broker is down: the job row is the outbox and the
# dispatch sweeper sends it later, so a web request never waits on a dead broker.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=60 * 60),
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "priority_steps": [0, 3, 6, 9],
    "sep": ":",
    "queue_order_strategy": "priority",
}
JOBS_QUEUES = ["default", "emails", "reports", "pages", "images", "maintenance"]
CELERY_TASK_DEFAULT_QUEUE = "default"
# Django's Tasks framework (django-tasks): @task functions run as jobs of the type
# tasks.run, on these queues, imported only from these modules (docs/django-tasks.md).
TASKS = {
    "default": {
        "BACKEND": "jobs.tasks_backend.JobsiteBackend",
        "QUEUES": env.list("JOBS_TASKS_QUEUES", default=["default"]),
        "OPTIONS": {
            "MODULES": env.list("JOBS_TASKS_MODULES", default=["examples.tasks"]),
            "MAX_ATTEMPTS": env.int("JOBS_TASKS_MAX_ATTEMPTS", default=3),
            "TIME_LIMIT": env.int("JOBS_TASKS_TIME_LIMIT", default=300),
        },
    }
}
CELERY_TASK_QUEUES = [
    Queue(name, routing_key=name, queue_arguments={"x-max-priority": 10}) for name in JOBS_QUEUES
]
CELERY_BEAT_SCHEDULER = "jobs.beat:DatabaseScheduler"
JOBS_SWEEP_INTERVAL = env.float("JOBS_SWEEP_INTERVAL", default=5.0)
# Each worker writes a heartbeat this often; /health/ counts it alive for the timeout.
WORKER_HEARTBEAT_INTERVAL = env.float("WORKER_HEARTBEAT_INTERVAL", default=10.0)
WORKER_HEARTBEAT_TIMEOUT = env.float("WORKER_HEARTBEAT_TIMEOUT", default=30.0)
# Linked from the staff dashboard.
FLOWER_URL = env("FLOWER_URL", default="http://127.0.0.1:5555/")
# /metrics: this bearer token or a staff session; nothing else (no trust of loopback).
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# /health/'s details (checks, workers, process): this bearer token or a staff session.
HEALTH_TOKEN = env("HEALTH_TOKEN", default=METRICS_TOKEN)
METRICS_DURATION_WINDOW = env.int("METRICS_DURATION_WINDOW", default=3600)
# On SIGTERM a worker finishes its jobs; those still running after this many seconds
# go back to the queue for another worker. Keep it below the supervisor's kill timeout.
WORKER_SHUTDOWN_GRACE = env.float("WORKER_SHUTDOWN_GRACE", default=30.0)
# Enqueue the schedules marked run_at_startup when a worker starts.
JOBS_STARTUP_JOBS = env.bool("JOBS_STARTUP_JOBS", default=True)

# Schedules, synced into django-celery-beat's tables after `migrate` and by
# `manage.py sync_schedules` (see jobs/schedules.py). `DISABLE_<NAME>_CRON=1` switches
# one off, e.g. DISABLE_DIGEST_CRON.
JOBS_SCHEDULES: dict[str, dict] = {
    "sweep": {
        "task": "jobs.sweep",
        "every": max(1.0, JOBS_SWEEP_INTERVAL),
        "expire_seconds": max(2, int(JOBS_SWEEP_INTERVAL * 2)),
        "description": "Send undispatched and due jobs; recover stalled ones.",
    },
    "purge": {
        "job": "system.purge",
        "cron": env("PURGE_CRON", default="17 * * * *"),
        "description": "Delete finished jobs past their type's retention.",
    },
    "result-cleanup": {
        "task": "celery.backend_cleanup",
        "cron": env("RESULT_CLEANUP_CRON", default="0 4 * * *"),
        "expire_seconds": 12 * 60 * 60,
        "description": "Delete expired Celery task results.",
    },
    "token-cleanup": {
        "job": "system.flush_expired_tokens",
        "cron": env("TOKEN_CLEANUP_CRON", default="30 4 * * *"),
        "description": "Delete expired refresh tokens and their blacklist entries.",
    },
    "image-cleanup": {
        "job": "notes.image_cleanup",
        "payload": {"type": "comprehensive"},
        "cron": env("IMAGE_CLEANUP_CRON", default="0 */6 * * *"),
        "run_at_startup": True,
        "description": "Mark images no page shows; delete those marked past the grace period.",
    },
    "reminder": {
        "job": "notes.task_reminders",
        "cron": env("REMINDER_CRON", default="*/5 * * * *"),
        "run_at_startup": True,
        "description": "E-mail owners about tasks due soon and overdue.",
    },
    "digest": {
        "job": "email.digest",
        "cron": env("DIGEST_CRON", default="0 7 * * *"),
        "payload": {"hours": 24},
        "description": "E-mail each user a summary of yesterday's jobs.",
    },
}
# The same schedules for a file-based Beat (`celery beat -S jobs.beat:PersistentScheduler`);
# the database scheduler reads the synced rows instead.
CELERY_BEAT_SCHEDULE = beat_schedule(JOBS_SCHEDULES)

# The job engine (jobs/).
# A running job whose heartbeat is older than this returns to the queue.
JOBS_LOCK_DURATION = env.float("JOBS_LOCK_DURATION", default=60.0)
JOBS_MAX_STALLED = env.int("JOBS_MAX_STALLED", default=2)
# While the database is unreachable, a worker retries claiming a job and recording its
# end for this many seconds (at most a quarter of JOBS_LOCK_DURATION); then the message
# goes back to the queue, or the job, still running, is recovered when its lock expires.
JOBS_DATABASE_RETRY_SECONDS = env.float("JOBS_DATABASE_RETRY_SECONDS", default=10.0)
# A queued job whose message was sent this long ago and still has not started is
# sent again (the broker may have lost it); duplicates are dropped at claim.
JOBS_REDISPATCH_AFTER = env.float("JOBS_REDISPATCH_AFTER", default=300.0)
# Delays up to this many seconds go to the broker as ETA messages; longer ones wait
# in the database for the dispatch sweeper.
JOBS_BROKER_DELAY_MAX = env.float("JOBS_BROKER_DELAY_MAX", default=60.0)
# Publishing a job's message (web requests, the sweeper) gives up after this many
# seconds to connect or to hear back, so a broker that hangs never holds a request;
# after a failure it is not tried again for JOBS_PUBLISH_BREAKER_SECONDS, new jobs being
# left to the dispatch sweeper meanwhile.
JOBS_PUBLISH_TIMEOUT = env.float("JOBS_PUBLISH_TIMEOUT", default=0.4)
JOBS_PUBLISH_BREAKER_SECONDS = env.float("JOBS_PUBLISH_BREAKER_SECONDS", default=2.0)
JOBS_SWEEP_BATCH = env.int("JOBS_SWEEP_BATCH", default=500)
# The follow-ups' catch-ups read the ends since their last pass less this lag (seconds),
# and everything once per JOBS_FOLLOW_UP_FULL_PASS_EVERY seconds (jobs/followups.py).
JOBS_FOLLOW_UP_LAG = env.int("JOBS_FOLLOW_UP_LAG", default=60)
JOBS_FOLLOW_UP_FULL_PASS_EVERY = env.int("JOBS_FOLLOW_UP_FULL_PASS_EVERY", default=3600)
# A handler's `ctx.snooze(seconds)`: the longest delay it may ask for, and how many times
# a job may snooze per round of attempts before it fails (so a handler cannot loop forever).
JOBS_SNOOZE_MAX = env.float("JOBS_SNOOZE_MAX", default=24 * 3600.0)
JOBS_MAX_SNOOZES = env.int("JOBS_MAX_SNOOZES", default=100)
JOBS_BULK_MAX = env.int("JOBS_BULK_MAX", default=1000)
# The most jobs one batch may hold (jobs/batches.py), through the API and in code.
JOBS_BATCH_MAX_JOBS = env.int("JOBS_BATCH_MAX_JOBS", default=1000)
# The most jobs one job may wait for (depends_on).
JOBS_MAX_DEPENDENCIES = env.int("JOBS_MAX_DEPENDENCIES", default=100)
# A queued job's place in line (jobs/line.py): the jobs ahead are counted no further than
# the cap; the estimate goes by the mean run time of the type's latest succeeded jobs,
# and what it reads is kept this many seconds per process.
JOBS_LINE_CAP = env.int("JOBS_LINE_CAP", default=100)
JOBS_LINE_SAMPLE = env.int("JOBS_LINE_SAMPLE", default=50)
JOBS_LINE_CACHE_SECONDS = env.float("JOBS_LINE_CACHE_SECONDS", default=5.0)
# Limits on jobs created through the API by non-staff users (see jobs/api.py):
# queued + running jobs per user (0: no cap), and the longest system.sleep.
JOBS_USER_MAX_ACTIVE = env.int("JOBS_USER_MAX_ACTIVE", default=1000)
JOBS_USER_SLEEP_MAX_SECONDS = env.float("JOBS_USER_SLEEP_MAX_SECONDS", default=60.0)
# How far ahead an API caller (staff too) may schedule a job's run_at, in seconds.
JOBS_MAX_SCHEDULE_AHEAD = env.int("JOBS_MAX_SCHEDULE_AHEAD", default=365 * 24 * 3600)
# Reports one user may have rendering at once, across all workers; the rest wait queued.
REPORTS_RUNNING_PER_OWNER = env.int("REPORTS_RUNNING_PER_OWNER", default=2)
# Webhooks (webhooks/): the receivers users register are called from the workers.
# Addresses in these networks (CIDRs) may be called although they are private, loopback
# or link-local; none by default.
WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = env.list("WEBHOOKS_ALLOWED_PRIVATE_NETWORKS", default=[])
# Plain http:// endpoints (https:// only by default).
WEBHOOKS_ALLOW_HTTP = env.bool("WEBHOOKS_ALLOW_HTTP", default=False)
# A PEM file of the CAs https receivers' certificates must chain to, instead of certifi's
# bundle (a private CA; append it to certifi's bundle to trust both); certifi's if empty.
WEBHOOKS_CA_BUNDLE = env.str("WEBHOOKS_CA_BUNDLE", default="")
if WEBHOOKS_CA_BUNDLE and not Path(WEBHOOKS_CA_BUNDLE).is_file():
    raise ImproperlyConfigured(f"WEBHOOKS_CA_BUNDLE is not a file: {WEBHOOKS_CA_BUNDLE}")
# Seconds to connect to a receiver, and to wait for each read of its answer.
WEBHOOKS_CONNECT_TIMEOUT = env.float("WEBHOOKS_CONNECT_TIMEOUT", default=5.0)
WEBHOOKS_READ_TIMEOUT = env.float("WEBHOOKS_READ_TIMEOUT", default=10.0)
# Attempts per delivery, and the first retry's delay in seconds (doubling, at most an hour).
WEBHOOKS_MAX_ATTEMPTS = env.int("WEBHOOKS_MAX_ATTEMPTS", default=10)
WEBHOOKS_BACKOFF_BASE = env.float("WEBHOOKS_BACKOFF_BASE", default=30.0)
# The longest Retry-After (seconds) a receiver answering 429 or 503 is granted.
WEBHOOKS_RETRY_AFTER_MAX = env.float("WEBHOOKS_RETRY_AFTER_MAX", default=3600.0)
# Endpoints one user may register.
WEBHOOKS_MAX_ENDPOINTS_PER_USER = env.int("WEBHOOKS_MAX_ENDPOINTS_PER_USER", default=10)
# The sweeper creates the deliveries a crash skipped for jobs that ended this many
# minutes ago at most.
WEBHOOKS_CATCH_UP_MINUTES = env.float("WEBHOOKS_CATCH_UP_MINUTES", default=60.0)
# ... at most once per this many seconds (the sweeper runs every JOBS_SWEEP_INTERVAL).
WEBHOOKS_CATCH_UP_EVERY = env.int("WEBHOOKS_CATCH_UP_EVERY", default=60)
# The claim and finish statements every job runs are prepared once per connection
# (PostgreSQL); 0 for connection poolers that cannot keep prepared statements.
JOBS_PREPARED_STATEMENTS = env.bool("JOBS_PREPARED_STATEMENTS", default=True)
# Also store each job run's outcome in django-celery-results (the job row has it anyway).
JOBS_STORE_TASK_RESULTS = env.bool("JOBS_STORE_TASK_RESULTS", default=False)

# Live updates (jobs/live.py): job changes published to a Redis pub/sub channel and
# pushed to waiting clients (GET /api/events/, the status endpoints' ?wait=).
PUSH_ENABLED = env.bool("PUSH_ENABLED", default=True)
PUSH_REDIS_URL = env("PUSH_REDIS_URL", default=REDIS_URL)
# The channel's name; by default derived from PUSH_REDIS_URL's database number.
PUSH_CHANNEL = env("PUSH_CHANNEL", default="")
# Publishing gives up on Redis after this many seconds and, after a failure, skips it
# for PUSH_BREAKER_SECONDS: a Redis that hangs never holds a worker or a request.
PUSH_PUBLISH_TIMEOUT = env.float("PUSH_PUBLISH_TIMEOUT", default=0.2)
PUSH_BREAKER_SECONDS = env.float("PUSH_BREAKER_SECONDS", default=2.0)
# Changes are published only while some web process has a waiting client: such a process
# keeps the key <channel>:listeners alive (this many seconds, renewed at a third of it);
# publishers look for the key at most once per PUSH_LISTENERS_CHECK_SECONDS.
PUSH_LISTENERS_TTL = env.int("PUSH_LISTENERS_TTL", default=60)
PUSH_LISTENERS_CHECK_SECONDS = env.float("PUSH_LISTENERS_CHECK_SECONDS", default=1.0)
# Each waiting client holds one of the web process's threads (gunicorn --threads,
# WEB_THREADS): at most this many wait at once per process, the rest are told to poll
# (503), so that WEB_THREADS - PUSH_MAX_WAITING threads stay for ordinary requests.
WEB_THREADS = env.int("WEB_THREADS", default=32)
PUSH_MAX_WAITING = env.int("PUSH_MAX_WAITING", default=max(1, WEB_THREADS - 8))
# The longest ?wait= of a status endpoint (longer ones are cut to it), and how long an
# event stream lasts before the client reconnects (so threads are recycled).
PUSH_MAX_WAIT_SECONDS = env.float("PUSH_MAX_WAIT_SECONDS", default=30.0)
PUSH_STREAM_SECONDS = env.float("PUSH_STREAM_SECONDS", default=300.0)
# A quiet stream sends a keep-alive comment this often (a client that left is noticed,
# and its thread freed, at the next one); the hub pings Redis when quiet as long.
PUSH_KEEPALIVE_SECONDS = env.float("PUSH_KEEPALIVE_SECONDS", default=5.0)
# How long the hub may take to (re)connect to Redis before clients are told to poll,
# and how long it waits before trying again after losing it.
PUSH_CONNECT_TIMEOUT = env.float("PUSH_CONNECT_TIMEOUT", default=1.0)
PUSH_RECONNECT_SECONDS = env.float("PUSH_RECONNECT_SECONDS", default=1.0)
# A stream reopened with a Last-Event-ID up to this many seconds old is sent what it
# missed (replayed, or read again: at most PUSH_RESUME_MAX_CHANGES jobs and batches);
# an older one, or more changes, gets a `reset` event (read everything again).
PUSH_RESUME_SECONDS = env.float("PUSH_RESUME_SECONDS", default=300.0)
PUSH_RESUME_MAX_CHANGES = env.int("PUSH_RESUME_MAX_CHANGES", default=1000)

LOG_FORMAT = env("LOG_FORMAT", default="text")
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "filters": {"job": {"()": "jobs.logging.JobContextFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["job"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
    },
}

if not DEBUG:
    # https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Probes from inside the deployment (health checks, Prometheus) speak plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^health/$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
    if not SECURE_HSTS_PRELOAD:
        # Preloading is hard to undo; it is a deliberate opt-in, not a missing setting.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    SECURE_CONTENT_TYPE_NOSNIFF = True
