"""Errors the gateway raises to its callers (the HTTP endpoint, agents, pages).

Each is a ServiceError, so the API renders it as a 4xx/5xx with a stable code and a
message; provider failures keep the provider's stable code (apps/llm/providers/base.py)."""

from apps.core.errors import ServiceError


class GatewayError(ServiceError):
    status = 400
    code = "llm_error"


class UnknownModel(GatewayError):
    status = 400
    code = "unknown_model"


class ModelDisabled(GatewayError):
    status = 403
    code = "model_disabled"


class MissingCredentials(GatewayError):
    status = 403
    code = "missing_credentials"


class ContextTooLong(GatewayError):
    status = 400
    code = "context_window_exceeded"


class InvalidTool(GatewayError):
    status = 400
    code = "invalid_tool"


class BudgetExceeded(GatewayError):
    status = 402
    code = "budget_exceeded"


class ProviderFailed(GatewayError):
    """Every attempt (retries, fallbacks) failed; `code` is the last provider error's."""

    status = 502
    code = "provider_error"
