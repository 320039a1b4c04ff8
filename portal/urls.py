from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("oauth2/v1/", include("accounts.oauth_urls")),
    path("api/", include("connector.api.urls")),
    path("", include("portal.web_urls")),
]
