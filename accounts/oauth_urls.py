"""OAuth2 endpoints, mounted at /oauth2/v1/ (protocol.md §1).

`{domain}` matches any path segment, so that an unknown or malformed domain is answered
like any other client that does not belong there (401 invalid_client), not with a 404.
"""

from django.urls import path

from accounts.oauth import TenantRevokeTokenView, TenantTokenView

app_name = "oauth2"

urlpatterns = [
    path("<str:domain>/token", TenantTokenView.as_view(), name="token"),
    path("<str:domain>/revoke", TenantRevokeTokenView.as_view(), name="revoke"),
]
