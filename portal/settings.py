"""Settings for Cloud Connector, read from the environment.

With no environment at all the project runs on an embedded default: SQLite in the
checkout, the in-memory channel layer, DEBUG on and a generated development secret.
Production is DEBUG off; it refuses to start without a real SECRET_KEY.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from pathlib import Path

import dj_database_url
from csp.constants import NONCE as CSP_NONCE
from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

from portal.env import env_bool, env_float, env_int, env_list, env_rate, env_seconds, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
JWT_KEY_MIN_BYTES = 32  # HS256: RFC 7518 §3.2 wants a key of at least the hash's size


def secret_key_is_strong(key: str) -> bool:
    # Django's own rule, the one behind its security.W009 deployment check.
    return (
        len(key) >= SECRET_KEY_MIN_LENGTH
        and len(set(key)) >= SECRET_KEY_MIN_UNIQUE_CHARACTERS
        and not key.startswith(SECRET_KEY_INSECURE_PREFIX)
    )


def jwt_keys(value: str, *, secret_key: str) -> dict[str, str]:
    """CC_JWT_KEYS: `kid:key` pairs, comma separated, the first signing. Anything malformed is
    an error: a key silently dropped would only show as tokens failing to verify."""
    keys: dict[str, str] = {}
    for number, entry in enumerate((item.strip() for item in value.split(",")), start=1):
        kid, colon, key = entry.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", kid):
            # By position only: the entry may be key material.
            raise ImproperlyConfigured(
                f"CC_JWT_KEYS: entry {number} is not kid:key (a kid of letters, digits, '.', '_' or '-')"
            )
        if kid in keys:
            raise ImproperlyConfigured(f"CC_JWT_KEYS: the kid {kid!r} appears twice")
        if len(key.encode()) < JWT_KEY_MIN_BYTES:
            raise ImproperlyConfigured(f"CC_JWT_KEYS: the key of {kid!r} is shorter than {JWT_KEY_MIN_BYTES} bytes")
        if key == secret_key:
            raise ImproperlyConfigured(f"CC_JWT_KEYS: the key of {kid!r} is SECRET_KEY; give device tokens their own")
        keys[kid] = key
    return keys


def development_secret() -> str:
    # Stable across restarts so that sessions survive `make run` being restarted.
    path = BASE_DIR / ".dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = development_secret()
elif not DEBUG and not secret_key_is_strong(SECRET_KEY):
    raise ImproperlyConfigured(
        f"SECRET_KEY is too weak for production: at least {SECRET_KEY_MIN_LENGTH} characters, "
        f"{SECRET_KEY_MIN_UNIQUE_CHARACTERS} of them different, not starting with {SECRET_KEY_INSECURE_PREFIX!r} "
        "(Django's security.W009 rule). Generate one: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "oauth2_provider",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks",
    "django_tasks_db",
    "accounts",
    "connector",
    "portal",
]

MIDDLEWARE = [
    # A request id on every log line of a request, echoed in X-Request-ID (portal/logs.py).
    "portal.logs.RequestIdMiddleware",
    # /healthz, /readyz and /metrics, answered before the rest: probes reach a worker by its
    # internal address over plain HTTP, need no session or user, and are never rate limited
    # (portal/health.py).
    "portal.health.HealthMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every view private unless marked login_not_required (portal/login_required.py).
    "portal.login_required.PortalLoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

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

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            # Several coroutines and threads write at once (relay counters, API): wait
            # for the lock instead of failing with "database is locked".
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            # A file, not memory, so that a server process started by the end-to-end
            # tests shares the test database with the test process.
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH", str(BASE_DIR / f"test-db-{os.getpid()}.sqlite3"))},
        }
    }

# The relay's database work and the token endpoint's run in this many threads per process,
# each with its own connection (kept for DB_CONN_MAX_AGE seconds): accounts/db_threads.py.
# SQLite always uses one thread (Channels' database thread): it locks the whole file.
DB_THREADS = env_int("DB_THREADS", 4)

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels_redis's RedisChannelLayer, made to ride out a Redis restart without
            # closing sockets (connector/relay/redis_layer.py, docs/benchmarks.md for the choice of layer).
            "BACKEND": "connector.relay.redis_layer.RedisChannelLayer",
            "CONFIG": {
                # channels_redis waits for messages with a 5 s blocking pop (BZPOPMIN); redis-py 8
                # reads with a 5 s socket timeout by default, so an idle consumer would die with
                # a TimeoutError (the client sees 1011). The read timeout must outlast the pop.
                # redis-py 8's asyncio pool holds at most 100 connections and raises (instead of
                # waiting) past that: a burst of thousands of disconnects, each leaving its
                # groups, failed with MaxConnectionsError and left memberships behind.
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 15,
                        "max_connections": env_int("REDIS_MAX_CONNECTIONS", 2000),
                    }
                ],
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1000),
                "expiry": 60,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The cache holds the sign-in throttle's counters: shared through Redis when there is one,
# so that every process of a deployment counts the same failures.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "cc",
        }
    }

AUTH_USER_MODEL = "accounts.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    # OAuth2 client secrets only (django-oauth-toolkit's CLIENT_SECRET_HASHER): see accounts/hashers.py.
    "accounts.hashers.ClientSecretHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600)

# Sign-in throttling (portal/login_throttle.py): the throttle backend refuses password
# checks while a username/address pair has failed too often, and makes an address that
# keeps failing wait before each check (a growing, capped delay), rather than lock out
# everyone behind it.
AUTHENTICATION_BACKENDS = [
    "portal.login_throttle.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
PORTAL_LOGIN_THROTTLE = {
    "FAILURES_PER_USER_ADDRESS": env_int("LOGIN_FAILURES_PER_USER_ADDRESS", 5),
    "FAILURES_PER_ADDRESS": env_int("LOGIN_FAILURES_PER_ADDRESS", 20),
    "WINDOW": env_int("LOGIN_THROTTLE_WINDOW", 900),
    "SLOWDOWN_BASE": 1,
    "SLOWDOWN_MAX": env_int("LOGIN_SLOWDOWN_MAX", 10),
    "SLOWDOWN_CONCURRENCY": env_int("LOGIN_SLOWDOWN_CONCURRENCY", 4),
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

EMAIL_BACKEND = env_str("EMAIL_BACKEND")
# Password reset links go by mail: in production they must reach a mailbox, not the log.
NOT_DELIVERING_EMAIL_BACKENDS = {
    "django.core.mail.backends.console.EmailBackend",
    "django.core.mail.backends.locmem.EmailBackend",
    "django.core.mail.backends.dummy.EmailBackend",
}
if not DEBUG and (not EMAIL_BACKEND or EMAIL_BACKEND in NOT_DELIVERING_EMAIL_BACKENDS):
    raise ImproperlyConfigured(
        "EMAIL_BACKEND must be set to a delivering backend when DEBUG is off, e.g. "
        f"django.core.mail.backends.smtp.EmailBackend with EMAIL_HOST (not {EMAIL_BACKEND or 'unset'})"
    )
EMAIL_BACKEND = EMAIL_BACKEND or "django.core.mail.backends.console.EmailBackend"
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "webmaster@localhost")

# The portal's pages load only their own scripts, styles and images: an injected <script> or
# inline handler does not run. The few inline blocks (Swagger UI's, templates/drf_spectacular)
# carry the request's nonce. Django 5.2 has no CSP of its own: django-csp.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", CSP_NONCE],
        "style-src": ["'self'", CSP_NONCE],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- OAuth2 (django-oauth-toolkit) ---------------------------------------------------
OAUTH2_PROVIDER_APPLICATION_MODEL = "accounts.Application"
OAUTH2_PROVIDER = {
    "CLIENT_SECRET_HASHER": "pbkdf2_sha256_client_secret",
    "ACCESS_TOKEN_EXPIRE_SECONDS": env_int("TOKEN_LIFETIME", 3600),
    "SCOPES": {
        "cloud-connector": "Claim devices and open Cloud Connector sessions",
        "provisioning": "Provision tenants through the REST API",
    },
    "DEFAULT_SCOPES": [],
    "SCOPES_BACKEND_CLASS": "accounts.oauth.CredentialScopes",
    "OAUTH2_VALIDATOR_CLASS": "accounts.oauth.TenantOAuth2Validator",
    "OAUTH2_SERVER_CLASS": "oauthlib.oauth2.BackendApplicationServer",
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
    # RFC 9700 §4: store access tokens by SHA-256 checksum only, never the raw value.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    # The rest of RFC 9700 as well. Only the client credentials grant is served and tokens
    # are read from the Authorization header only, so these change nothing at run time;
    # they keep `check --deploy` free of the toolkit's warnings.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
}

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.api_auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50),
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "connector.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Per client address and per credential, counted in the cache (Redis with REDIS_URL):
    # accounts/throttles.py. Generous enough for a POS fleet behind one NAT; a flood is not.
    "DEFAULT_THROTTLE_CLASSES": [
        "connector.api.throttles.ApiAddressRateThrottle",
        "connector.api.throttles.ApiCredentialRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "api_address": env_rate("API_RATE_PER_ADDRESS", "3000/min"),
        "api_credential": env_rate("API_RATE_PER_CREDENTIAL", "1200/min"),
        # The token endpoint's (accounts/oauth.py): every request of an address, and the
        # requests of a client that proved its secret.
        "token_address": env_rate("TOKEN_RATE_PER_ADDRESS", "1200/min"),
        "token_client": env_rate("TOKEN_RATE_PER_CLIENT", "300/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cloud Connector provisioning API",
    "DESCRIPTION": "Provision tenants, merchant aggregators, merchants, stores, POS, "
    "Cloud API applications and devices, and activate Cloud Connector.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the installed drf-spectacular-sidecar (static files), not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One name for the disconnect reasons that the device and its connections both show.
    "ENUM_NAME_OVERRIDES": {"DisconnectReasonEnum": "connector.models.DisconnectReason"},
}

# --- Cloud Connector relay ---------------------------------------------------------------
# Device JWT keys of their own in production; in development, SECRET_KEY under kid "dev".
if env_str("CC_JWT_KEYS").strip():
    JWT_KEYS = jwt_keys(env_str("CC_JWT_KEYS"), secret_key=SECRET_KEY)
elif DEBUG:
    JWT_KEYS = {"dev": SECRET_KEY}
else:
    raise ImproperlyConfigured(
        "CC_JWT_KEYS must be set when DEBUG is off: kid:key pairs, comma separated, each key at least "
        f"{JWT_KEY_MIN_BYTES} bytes and not SECRET_KEY (docs/deploy.md)"
    )

# Each key's default, type and meaning are in connector/conf.py (`connector_settings`), and
# only there: CLOUD_CONNECTOR holds the JWT keys and what the environment sets, `CC_<KEY>` (or
# `CC_<KEY>_FILE`), each read by its typed reader (lower case: not a setting itself).
cc_environment = {
    "JWT_LIFETIME": env_int,
    "GRACE_PERIOD": env_int,
    "RESTART_GRACE_PERIOD": env_int,
    "ENDED_RETENTION": env_int,
    "REGISTRATION_TIMEOUT": env_float,
    "MAX_MESSAGE_SIZE": env_int,
    "PING_INTERVAL": env_int,
    "PING_TIMEOUT": env_int,
    "ALLOWED_ORIGINS": env_list,
    "FAILED_REGISTRATION_LIMIT": env_int,
    "FAILED_REGISTRATION_ADDRESS_LIMIT": env_int,
    "FAILED_REGISTRATION_WINDOW": env_int,
    "VERIFIED_REGISTRATION_TTL": env_int,
    "SERIAL_REFUSAL_LIMIT": env_int,
    "SERIAL_REFUSAL_WINDOW": env_int,
    "COUNTER_FLUSH_INTERVAL": env_float,
    "SSL_PROFILE": env_str,
    "PUBLIC_WS_URL": env_str,
    "SWEEP_INTERVAL": env_float,
    "NODE_TIMEOUT": env_int,
    "SHUTDOWN_GRACE": env_int,
    "MAX_SOCKET_BUFFER": env_int,
    "MAX_LISTENERS_PER_CREDENTIAL": env_int,
    "MAX_SESSION_SOCKETS_PER_CREDENTIAL": env_int,
    "ADMISSION_MIN_PENDING": env_int,
    "ADMISSION_MAX_WAIT": env_float,
    "HISTORY_DAYS": env_int,
    "LAST_SEEN_INTERVAL": env_float,
    "WEBHOOK_TIMEOUT": env_float,
    "WEBHOOK_RETRY_HOURS": env_float,
    "WEBHOOK_ALLOW_PRIVATE": env_bool,
    "HELD_FRAMES": env_int,
    "HELD_BYTES": env_int,
    "HELD_TOTAL_BYTES": env_int,
}
# With no default, a reader answers None for a variable that is not set (or set empty, for
# a number or a list): that key is left out, and the app's default holds.
CLOUD_CONNECTOR = {
    "JWT_KEYS": JWT_KEYS,
    **{key: value for key, read in cc_environment.items() if (value := read(f"CC_{key}", None)) is not None},
}

# Background work (webhook deliveries, connector.webhooks) through Django's task API, on the
# database backend: a task is a row written in the transaction that enqueues it, so an event's
# deliveries commit or roll back with the fact. `manage.py db_worker` runs them (bin/run,
# bin/serve); docs/webhooks.md says why this library.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "webhooks"]}}

# --- Operations: health, readiness, metrics, logs (docs/operations.md) -----------------------


def metrics_addresses(values: list[str]) -> list[str]:
    """METRICS_ALLOWED_ADDRESSES: addresses or networks (CIDR), comma separated."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"METRICS_ALLOWED_ADDRESSES: {value!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return values


# /metrics answers these addresses only (REMOTE_ADDR: the TCP peer, or the client's address that
# portal.proxies took from a proxy in FORWARDED_ALLOW_IPS; a request that came through a proxy is refused
# anyway), and, when METRICS_TOKEN is set, with `Authorization: Bearer <METRICS_TOKEN>`.
# Proxies whose X-Forwarded-For/-Proto and client-certificate headers (v1.1 §15) are believed;
# from any other peer they are ignored (portal.proxies, the outermost layer of portal.asgi).
FORWARDED_ALLOW_IPS = env_list("FORWARDED_ALLOW_IPS", ["127.0.0.1"])
METRICS_ALLOWED_ADDRESSES = metrics_addresses(env_list("METRICS_ALLOWED_ADDRESSES", ["127.0.0.0/8", "::1/128"]))
METRICS_TOKEN = env_str("METRICS_TOKEN")
if (
    not DEBUG
    and not METRICS_TOKEN
    and any(ipaddress.ip_network(value, strict=False).prefixlen == 0 for value in METRICS_ALLOWED_ADDRESSES)
):
    raise ImproperlyConfigured(
        "METRICS_ALLOWED_ADDRESSES lets every address read /metrics: set METRICS_TOKEN as well, or name "
        "the Prometheus servers' addresses (docs/operations.md)"
    )
# Each /readyz check (database, Redis, channel layer) gives up after this many seconds.
READINESS_TIMEOUT = env_seconds("READINESS_TIMEOUT", 1.0)

# JSON lines in production, text in development (portal/logs.py); never a secret either way.
LOG_FORMAT = (env_str("LOG_FORMAT") or ("text" if DEBUG else "json")).strip().lower()
if LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or text, not {LOG_FORMAT!r}")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "portal.logs.AddContext"},
        "scrub_secrets": {"()": "portal.logs.ScrubSecrets"},
        "quiet_probes": {"()": "portal.logs.QuietProbes"},
    },
    "formatters": {
        "json": {"()": "portal.logs.JsonFormatter"},
        "text": {"()": "portal.logs.TextFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "scrub_secrets"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own default handlers (a bare console line in DEBUG, mail to ADMINS otherwise)
        # off: its records go to the root handler like every other's, once and in our format.
        "django": {"handlers": [], "level": "INFO"},
        "django.request": {"filters": ["quiet_probes"]},
        # `runserver` (daphne's) logs an access line for each response, at WARNING for a 4xx and
        # ERROR for a 5xx: the very responses django.request reports already, with the request
        # id and the traceback. Both reached the console, so every such line came twice; only
        # django.request's stays. (Production's access log is uvicorn's, below.)
        "django.channels.server": {"handlers": [], "level": "CRITICAL", "propagate": False},
        # uvicorn's own lines (its errors and access log) in the same format as the rest: it
        # configured its loggers before Django did, and these replace its handlers.
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.access": {
            "handlers": ["console"],
            "level": LOG_LEVEL,
            "propagate": False,
            "filters": ["quiet_probes"],
        },
    },
}
