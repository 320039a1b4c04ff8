"""The OAuth2 authorization server: client credentials tokens per tenant domain.

`POST /oauth2/v1/{domain}/token` and `POST /oauth2/v1/{domain}/revoke` (protocol.md §1,
RFC 6749 §4.4 and RFC 7009) run on django-oauth-toolkit with oauthlib's
BackendApplicationServer. What is ours:

- the domain: a client authenticates only at its own tenant's domain;
- what a credential is decides its scopes (`credential_scopes`), and a credential with no
  scope at all (a Cloud API application without the service, grant and role Cloud
  Connector needs, or an orphan) cannot authenticate;
- every answer is RFC 6749 §5.1/§5.2 JSON, never an HTML page or a 500 for bad input.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from urllib.parse import unquote_plus

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ObjectDoesNotExist, SuspiciousOperation
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.models import AccessToken, revoke_access_token
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.scopes import BaseScopes
from oauth2_provider.settings import oauth2_settings
from oauth2_provider.views import RevokeTokenView, TokenView
from oauthlib.common import Request as OAuthlibRequest
from oauthlib.oauth2.rfc6749 import errors

from accounts import db_threads, metrics
from accounts.audit import audit_record
from accounts.credentials import (
    SCOPE_CLOUD_CONNECTOR,
    SCOPE_PROVISIONING,
    token_checksum,
    unknown_client_secret_check,
)
from accounts.models import Application
from accounts.scope import principal_for_application
from accounts.signals import token_revoked
from accounts.throttles import TokenAddressRateThrottle, TokenClientRateThrottle

log = logging.getLogger(__name__)

# The view puts the URL's domain into the request environment under this key, which the
# oauthlib request carries as a header. A client cannot set it: HTTP headers only ever
# reach the environment as `HTTP_*` keys.
DOMAIN_KEY = "cloud_connector.oauth_domain"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
BASIC_CHALLENGE = 'Basic realm="cloud-connector", charset="UTF-8"'


class RateLimited(Exception):
    """Too many requests of one address or one client: answered 429 `rate_limited`."""

    def __init__(self, retry_after: int, whom: str) -> None:
        super().__init__(whom)
        self.retry_after = retry_after
        self.whom = whom


# --- what a credential may do ------------------------------------------------------------


def _owner(application: Application, name: str):
    """The POS, Cloud API application or provisioning client behind a credential, or None;
    no query when it was read with the application (`select_related`), and at most one per
    request otherwise (Django remembers the answer, a missing one included)."""
    try:
        return getattr(application, name)
    except ObjectDoesNotExist:
        return None


def credential_scopes(application: Application | None) -> list[str]:
    """The scopes a credential has, by what owns it; empty when it may have no token."""
    if application is None or application.pk is None:
        return []
    kind = Application.Kind
    if application.kind == kind.POS and _owner(application, "pos") is not None:
        return [SCOPE_CLOUD_CONNECTOR]
    if application.kind == kind.CLOUD_API:
        app = _owner(application, "cloud_application")
        if app is not None and not app.missing_for_cloud_connector():
            return [SCOPE_CLOUD_CONNECTOR]
        return []
    if application.kind == kind.PROVISIONING and _owner(application, "provisioning_client") is not None:
        return [SCOPE_PROVISIONING]
    return []


def credential_refusal(*, application: Application, domain: str | None) -> str | None:
    """Why an authenticated client may not have a token at `domain`, or None if it may.

    Only ever told to a client that proved its secret, so it may be specific.
    """
    if domain is None or application.tenant.domain != domain:
        return "The client is not registered in this domain."
    app = _owner(application, "cloud_application")
    missing = app.missing_for_cloud_connector() if app is not None else []
    if missing:
        return f"The application cannot use Cloud Connector: it lacks {', '.join(missing)}."
    if not credential_scopes(application):
        return "The credential is not usable."
    return None


class CredentialScopes(BaseScopes):
    """Scopes backend: a credential's scopes follow from what it is, and by default it
    gets all of them."""

    def get_all_scopes(self) -> dict[str, str]:
        return oauth2_settings.SCOPES

    def get_available_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return credential_scopes(application)

    def get_default_scopes(self, application=None, request=None, *args, **kwargs) -> list[str]:
        return credential_scopes(application)


# --- services ------------------------------------------------------------------------------


@transaction.atomic
def access_token_revoke(*, application: Application, raw_token: str) -> bool:
    """Revoke one access token of `application` (RFC 7009); False if it has none such.

    The relay, told by the `token_revoked` signal, ends the sessions registered with it and,
    after commit, closes the sockets that authenticated with it.
    """
    checksum = token_checksum(raw_token)
    token = (
        AccessToken.objects.select_for_update()
        .filter(token_checksum=checksum, application=application)
        .select_related("application")
        .first()
    )
    if token is None:
        return False
    audit_record(
        actor=principal_for_application(application),
        action="access_token.revoke",
        obj=token,
        tenant_id=application.tenant_id,
        data={"client_id": application.client_id},
    )
    revoke_access_token(token)
    token_revoked.send(sender=AccessToken, application_id=application.pk, token_checksum=checksum)
    return True


# --- client authentication -------------------------------------------------------------------


def _parse_basic(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) of a `Basic` header value (RFC 6749 §2.3.1), or None."""
    _, _, encoded = header.strip().partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _is_basic(header: str | None) -> bool:
    return bool(header) and header.strip().split(" ", 1)[0].lower() == "basic"


def _presented_credentials(request: OAuthlibRequest) -> tuple[str, str] | None:
    """The credentials the client presented, by exactly one method, or None.

    Raises invalid_request when it used two methods (RFC 6749 §2.3) and invalid_client
    when its HTTP Basic credentials cannot be read.
    """
    header = request.headers.get("Authorization")
    body_id, body_secret = request.client_id, request.client_secret
    if not _is_basic(header):
        if body_id and body_secret is not None:
            return body_id, body_secret
        return None
    if body_secret is not None:
        raise errors.InvalidRequestError(
            description="Use one client authentication method: HTTP Basic or the client_secret form field.",
            request=request,
        )
    credentials = _parse_basic(header)
    if credentials is None:
        raise errors.InvalidClientError(
            description="Client authentication failed: malformed HTTP Basic credentials.", request=request
        )
    if body_id is not None and body_id != credentials[0]:
        raise errors.InvalidRequestError(
            description="The client_id form field does not match the HTTP Basic credentials.", request=request
        )
    return credentials


def _find_application(client_id: str) -> Application | None:
    if "\x00" in client_id:
        # PostgreSQL refuses a NUL byte in a query parameter (a DataError that would also
        # abort the transaction), and no client id holds one.
        return None
    # Its tenant and whichever owner it has, in the same query: credential_refusal and the
    # scope checks then need none.
    owners = ("tenant", "pos", "cloud_application", "provisioning_client")
    return next(iter(Application.objects.select_related(*owners).filter(client_id=client_id)[:1]), None)


class TenantOAuth2Validator(OAuth2Validator):
    """The toolkit's validator, with client authentication bound to the URL's domain."""

    def client_authentication_required(self, request, *args, **kwargs) -> bool:
        # Every credential is confidential: there is no public-client path to a token.
        return True

    def authenticate_client(self, request, *args, **kwargs) -> bool:
        credentials = _presented_credentials(request)
        if credentials is None:
            raise errors.InvalidClientError(
                description="Client authentication failed: send the client credentials by HTTP Basic "
                "or as client_id and client_secret form fields.",
                request=request,
            )
        client_id, secret = credentials
        application = _find_application(client_id)
        if application is None:
            # Hash anyway, so that an unknown client id answers as slowly as a wrong secret.
            unknown_client_secret_check(secret)
        if application is None or not self._check_secret(secret, application.client_secret):
            raise errors.InvalidClientError(
                description="Client authentication failed: unknown client or wrong secret.", request=request
            )
        refusal = credential_refusal(application=application, domain=request.headers.get(DOMAIN_KEY))
        if refusal is not None:
            raise errors.InvalidClientError(description=f"Client authentication failed. {refusal}", request=request)
        throttle = TokenClientRateThrottle()
        if not throttle.allow(application.client_id):
            # Not an oauthlib error, which could only answer 400 or 401: the view answers 429.
            raise RateLimited(int(throttle.wait()), "this client")
        request.client = application
        return True

    def authenticate_client_id(self, client_id, request, *args, **kwargs) -> bool:
        return False

    def validate_scopes(self, client_id, scopes, client, request, *args, **kwargs) -> bool:
        available = credential_scopes(client)
        if not set(scopes) <= set(available):
            raise errors.InvalidScopeError(
                description=f"This client may request only the scope {' '.join(available)}.", request=request
            )
        return True

    def revoke_token(self, token, token_type_hint, request, *args, **kwargs) -> None:
        access_token_revoke(application=request.client, raw_token=token)


# --- the endpoints ---------------------------------------------------------------------------


def token_lifetime(request: OAuthlibRequest) -> int:
    # Read per request rather than fixed when the server object is built (it is cached
    # on the view class), so that the setting is the single source of the lifetime.
    return oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS


def oauth_response(status: int, body: str | dict) -> HttpResponse:
    """An RFC 6749 §5.1/§5.2 answer: JSON, never cached; a 401 names the Basic scheme.

    An empty body (a successful revocation, RFC 7009 §2.2) stays empty.
    """
    content = json.dumps(body) if isinstance(body, dict) else body
    if content:
        response = HttpResponse(content, status=status, content_type="application/json")
    else:
        response = HttpResponse(status=status, content_type="text/plain; charset=utf-8")
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    if status == 401:
        response["WWW-Authenticate"] = BASIC_CHALLENGE
    return response


def oauth_error(status: int, error: str, description: str) -> HttpResponse:
    return oauth_response(status, {"error": error, "error_description": description})


def rate_limited(limit: RateLimited) -> HttpResponse:
    """429 in the shape of RFC 6749 §5.2 (`rate_limited` is no code of the RFC's: none of
    its codes says "come back later"), with Retry-After (RFC 9110 §10.2.3)."""
    response = oauth_error(
        429,
        "rate_limited",
        f"Too many requests from {limit.whom}; retry after {limit.retry_after} seconds.",
    )
    response["Retry-After"] = str(limit.retry_after)
    return response


class DomainEndpointMixin:
    """POST only, form-encoded only, the domain on the request, errors as OAuth2 JSON."""

    http_method_names = ["post"]

    @classmethod
    def get_server(cls):
        kwargs = {**oauth2_settings.server_kwargs, "token_expires_in": token_lifetime}
        return cls.get_server_class()(cls.get_validator_class()(), **kwargs)

    @classmethod
    def get_oauthlib_core(cls):
        # Cached on this very class: the toolkit's hasattr() test would also find a core
        # cached on its own view class, built without our server arguments.
        if "_oauthlib_core" not in cls.__dict__ or oauth2_settings.ALWAYS_RELOAD_OAUTHLIB_CORE:
            cls._oauthlib_core = cls.get_oauthlib_backend_class()(cls.get_server())
        return cls._oauthlib_core

    def dispatch(self, request: HttpRequest, *args, domain: str, **kwargs) -> HttpResponse:
        request.META[DOMAIN_KEY] = domain
        return super().dispatch(request, *args, **kwargs)

    def http_method_not_allowed(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = oauth_error(405, "invalid_request", f"Method {request.method} is not allowed; use POST.")
        response["Allow"] = "POST"
        if self.view_is_async:

            async def answer() -> HttpResponse:
                return response

            return answer()
        return response

    def answer(self, request: HttpRequest, respond) -> HttpResponse:
        """`respond(request)`'s answer, unless the address is over its limit (counted before
        anything else: a flood must not cost a password hash per request) or the request is
        malformed."""
        address = TokenAddressRateThrottle()
        if not address.allow_request(request, self):
            return rate_limited(RateLimited(int(address.wait()), "this address"))
        refusal = self.malformed(request)
        if refusal is not None:
            return refusal
        try:
            _, headers, body, status = respond(request)
        except RateLimited as limit:
            return rate_limited(limit)
        return self.oauthlib_answer(headers, body, status)

    def malformed(self, request: HttpRequest) -> HttpResponse | None:
        """An invalid_request answer for a request oauthlib should not see, or None."""
        if request.META.get("QUERY_STRING"):
            return oauth_error(400, "invalid_request", "URL query parameters are not allowed.")
        try:
            has_body = bool(request.body)
            request.POST  # noqa: B018 -- parse now, so that a bad body is answered here
        except SuspiciousOperation:
            # Beyond DATA_UPLOAD_MAX_MEMORY_SIZE or _NUMBER_FIELDS: Django refuses to read it.
            return oauth_error(400, "invalid_request", "The request body is too large or has too many fields.")
        if has_body and request.content_type != FORM_CONTENT_TYPE:
            return oauth_error(400, "invalid_request", f"The request body must be {FORM_CONTENT_TYPE}.")
        # RFC 6749 §3.2: no parameter more than once. The toolkit hands oauthlib only the
        # last value of each (QueryDict.items()), so oauthlib never sees a repetition.
        repeated = sorted(name for name, values in request.POST.lists() if len(values) > 1)
        if repeated:
            return oauth_error(400, "invalid_request", f"Repeated parameter: {', '.join(repeated)}.")
        return None

    def oauthlib_answer(self, headers: dict, body: str, status: int) -> HttpResponse:
        if status >= 500:
            log.error("OAuth2 endpoint answered %s: %s", status, body)
        return oauth_response(status, described(body) if status >= 400 else body)


# oauthlib leaves some errors without words; a client developer deserves a sentence.
ERROR_DESCRIPTIONS = {
    "unsupported_grant_type": "Only the client_credentials grant type is supported.",
    "unsupported_token_type": "Only access tokens can be revoked; no refresh tokens are issued.",
    "invalid_request": "The request is malformed.",
    "invalid_client": "Client authentication failed.",
    "invalid_scope": "The requested scope is not available to this client.",
}


def described(body: str) -> str | dict:
    """An oauthlib error body, with an error_description where it had none."""
    try:
        error = json.loads(body)
    except ValueError:
        return body
    if isinstance(error, dict) and "error" in error and not error.get("error_description"):
        error["error_description"] = ERROR_DESCRIPTIONS.get(error["error"], "The request was refused.")
    return error


# Our dispatch() replaces the toolkit's, and with it the marks its decorators left there.
@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(login_not_required, name="dispatch")
class TenantTokenView(DomainEndpointMixin, TokenView):
    """`POST /oauth2/v1/{domain}/token`: the client credentials grant, nothing else.

    An async view whose work (the secret check, one query for the client and its owner,
    the token's insert) runs in a database thread of accounts.db_threads: on PostgreSQL a
    pool thread that keeps its connection (`CONN_MAX_AGE`), where a synchronous view would
    run in a thread of its own per request and open a new connection every time.
    """

    async def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        return await db_threads.run(self.token_answer, request)

    def token_answer(self, request: HttpRequest) -> HttpResponse:
        with metrics.token_requests.timed() as attempt:
            response = self.answer(request, self.create_token_response)
            attempt.outcome = token_outcome(response)
        return response


def token_outcome(response: HttpResponse) -> str:
    """ "ok", or the RFC 6749 error code of a token endpoint's answer (accounts.metrics)."""
    if response.status_code < 400:
        return metrics.OK
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else "server_error"


@method_decorator(csrf_exempt, name="dispatch")
@method_decorator(login_not_required, name="dispatch")
class TenantRevokeTokenView(DomainEndpointMixin, RevokeTokenView):
    """`POST /oauth2/v1/{domain}/revoke` (RFC 7009): 200 whether or not the token existed."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        # The revocation itself is one transaction (access_token_revoke); the client
        # authentication before it, a slow password hash, holds no database lock.
        return self.answer(request, self.create_revocation_response)
