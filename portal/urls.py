from django.contrib import admin
from django.urls import include, path

from connector import fleet_admin

# The fleet page (connector/fleet_admin.py) joins the admin before its URLs are built.
# /healthz, /readyz and /metrics have no URL here: portal.health.HealthMiddleware answers them.
fleet_admin.register(admin.site)

urlpatterns = [
    path("admin/", admin.site.urls),
    path("oauth2/v1/", include("accounts.oauth_urls")),
    path("api/", include("connector.api.urls")),
    path("", include("portal.web_urls")),
]
