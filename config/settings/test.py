import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from config.env import env_str
from config.settings.base import *  # noqa: F403
from config.settings.base import ALLOWED_HOSTS, REDIS_URL, caches_for, channel_layers_for

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "agentyard-test")
WORKER_HEARTBEAT_SECONDS = 1

# Tests use their own Redis database, channel prefix and queue, so a running
# `make run` on the same machine never sees test traffic (or the reverse).
TEST_REDIS_URL = env_str("TEST_REDIS_URL", urlsplit(REDIS_URL)._replace(path="/15").geturl())
CACHES = caches_for(TEST_REDIS_URL)
CHANNEL_LAYERS = channel_layers_for(TEST_REDIS_URL, prefix="asgi-test")
CELERY_BROKER_URL = TEST_REDIS_URL
CELERY_RESULT_BACKEND = TEST_REDIS_URL
REDIS_URL = TEST_REDIS_URL

# Tests change keys behind the services' back (expiry, suspension); no cache in between.
# tests/api/test_key_cache.py turns it on to test it.
API_KEY_CACHE_SECONDS = 0
# Each test's gateway routes by its own moving averages, never by those another test
# (or the worker) published; tests/llm/test_router_shared_stats.py turns sharing on.
LLM_ROUTER_STATS_SYNC_SECONDS = 0
# The knowledge index of a test process is its own (made on first use): never the
# development index under .run/, whose organizations may share the tests' slugs. Tests of
# the index set their own path per test (tests/knowledge/conftest.py).
CHROMA_URL = ""
KNOWLEDGE_CHROMA_PATH = str(Path(tempfile.gettempdir()) / f"agentyard-test-chroma-{os.getpid()}")

# The test world's organizations start on Business, which has every feature the suite
# exercises (SSO, knowledge, audit export) and limits above the platform caps the
# existing tests set; billing tests move an organization to a smaller plan themselves.
BILLING_DEFAULT_PLAN = "business"
