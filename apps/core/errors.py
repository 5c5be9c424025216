"""Errors a person can cause in a service, with the HTTP status and code they map to.

Services raise these; the API's exception handler and the pages turn them into
a 4xx with the message, never a 500."""


class ServiceError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class Invalid(ServiceError):
    status = 400
    code = "invalid"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Stale(ServiceError):
    status = 412
    code = "precondition_failed"


class Gone(ServiceError):
    status = 410
    code = "gone"


class Unavailable(ServiceError):
    """A service we depend on (the workspace runtime) cannot be reached; nothing changed."""

    status = 503
    code = "unavailable"
