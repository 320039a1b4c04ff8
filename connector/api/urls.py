"""/api/: the provisioning REST API (v1), its OpenAPI schema and its Swagger UI."""

from django.contrib.auth.decorators import login_not_required
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from connector.api import (
    schema,  # noqa: F401  (registers the OpenAPI extensions)
    views,
    webhooks,
)

app_name = "api"

# Integer ids through Django's `int` path converter (typed `integer` in the schema); session
# ids are opaque url-safe strings.
router = SimpleRouter(use_regex_path=False)
router.register("subscriptions", views.SubscriptionViewSet, basename="subscription")
router.register("merchant-aggregators", views.MerchantAggregatorViewSet, basename="merchant-aggregator")
router.register("merchants", views.MerchantViewSet, basename="merchant")
router.register("stores", views.StoreViewSet, basename="store")
router.register("pos", views.PosViewSet, basename="pos")
router.register("applications", views.ApplicationViewSet, basename="application")
router.register("devices", views.DeviceViewSet, basename="device")
router.register("webhook-endpoints", webhooks.WebhookEndpointViewSet, basename="webhook-endpoint")
session_router = SimpleRouter()
session_router.register("sessions", views.DeviceSessionViewSet, basename="session")

urlpatterns = [
    path("v1/", include(router.urls + session_router.urls)),
    # The schema and its browser are public: the contract calls the schema the full reference.
    path("schema/", login_not_required(SpectacularAPIView.as_view()), name="schema"),
    path("docs/", login_not_required(SpectacularSwaggerView.as_view(url_name="api:schema")), name="docs"),
    # Anything else under /api/ is a JSON 404, not an HTML page (and never the 500 that
    # Django's APPEND_SLASH raises in debug mode for a POST without a trailing slash).
    re_path(r"^[\s\S]*$", views.not_found, name="not-found"),
]
