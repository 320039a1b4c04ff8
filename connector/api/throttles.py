"""The REST API's rate limits (accounts/throttles.py counts): per client address and per
credential, the rates under `api_address` and `api_credential` in
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]. Over either, DRF answers 429 with Retry-After and
`{"detail": ...}`."""

from __future__ import annotations

from rest_framework.request import Request

from accounts.credentials import BearerAuth
from accounts.throttles import AddressRateThrottle, WindowRateThrottle


class ApiAddressRateThrottle(AddressRateThrottle):
    scope = "api_address"


class ApiCredentialRateThrottle(WindowRateThrottle):
    """A bearer token counts against its client (all its tokens together), a portal session
    against itself (the session is the credential: getting another takes a sign-in, which has
    its own throttle); an anonymous request only against its address."""

    scope = "api_credential"

    def ident(self, request: Request, view) -> str | None:
        if isinstance(request.auth, BearerAuth):
            return f"client:{request.auth.client_id}"
        user = request.user
        session = getattr(request._request, "session", None)
        if user is not None and user.is_authenticated and session is not None and session.session_key:
            return f"session:{session.session_key}"
        return None


class ThrottledBeforeAuthentication:
    """A view mixin: the limits are checked before authentication and permissions (DRF
    checks them last), so that a flood of made-up bearer tokens meets the address limit
    before each one costs a database query. The credential limit then authenticates the
    request itself, which answers 401 for a bad token as usual."""

    def initial(self, request: Request, *args, **kwargs) -> None:
        self.check_throttles(request)
        super().initial(request, *args, **kwargs)

    def check_throttles(self, request: Request) -> None:
        if getattr(request, "_throttles_checked", False):
            return
        request._throttles_checked = True
        # In order, and stopping at the first refusal: over the address limit, the request
        # is not authenticated at all.
        for throttle in self.get_throttles():
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())
