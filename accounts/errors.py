"""Domain errors raised by services and selectors, translated at the edge in one place
(the REST API's exception handler, the relay's error table, the portal's forms)."""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()


class NotFound(DomainError):
    """Not found."""

    code = "not_found"


class NotAllowed(DomainError):
    """You are not allowed to do that."""

    code = "not_allowed"


class Conflict(DomainError):
    """The request conflicts with the current state."""

    code = "conflict"


class Invalid(DomainError):
    """Invalid input, with messages per field."""

    code = "invalid"

    def __init__(self, errors: dict[str, list[str]] | str) -> None:
        if isinstance(errors, str):
            errors = {"non_field_errors": [errors]}
        self.errors = errors
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))


class RateLimited(DomainError):
    """Too many attempts; try again later."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
