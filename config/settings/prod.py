"""Production: every secret and address comes from the environment, with no default.

`DJANGO_SETTINGS_MODULE=config.settings.prod python manage.py check --deploy
--fail-level WARNING` passes given the variables in the README's table.
"""

from config.env import env_bool, env_int, env_list, env_str
from config.settings.base import *  # noqa: F403
from config.settings.base import BASE_DOMAIN, PUBLIC_HOSTS, caches_for, channel_layers_for, databases_for

DEBUG = False
SECRET_KEY = env_str("SECRET_KEY")
RUNTIME_SECRET = env_str("RUNTIME_SECRET")
BASE_DOMAIN = env_str("BASE_DOMAIN").lower()  # noqa: F811
ALLOWED_HOSTS = [BASE_DOMAIN, "." + BASE_DOMAIN, *PUBLIC_HOSTS, *env_list("ALLOWED_HOSTS")]

DATABASE_URL = env_str("DATABASE_URL")
DATABASES = databases_for(DATABASE_URL)
REDIS_URL = env_str("REDIS_URL")
CACHES = caches_for(REDIS_URL)
CHANNEL_LAYERS = channel_layers_for(REDIS_URL, prefix=env_str("CHANNELS_PREFIX", "asgi"))
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)

# TLS ends at the load balancer, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_TRUSTED_ORIGINS = [f"https://{BASE_DOMAIN}", f"https://*.{BASE_DOMAIN}"]

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)

# Owners type their OIDC issuer; the server must not be sent into its own network.
SSO_ALLOW_PRIVATE_ISSUERS = env_bool("SSO_ALLOW_PRIVATE_ISSUERS", False)
# Agents' organization tools likewise (apps/agents/tools/organization.py).
AGENTS_TOOLS_ALLOW_PRIVATE_URLS = env_bool("AGENTS_TOOLS_ALLOW_PRIVATE_URLS", False)
