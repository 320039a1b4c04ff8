"""The web portal for merchant and merchant-aggregator users, and its sign-in pages."""

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.urls import path, re_path, reverse_lazy

from portal.views import (
    activation,
    applications,
    auth,
    certificates,
    devices,
    home,
    static,
    stores,
    team,
    webhooks,
)

app_name = "portal"

auth_patterns = [
    path("accounts/login/", auth.PortalLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(
            template_name="portal/auth/password_change_form.html",
            success_url=reverse_lazy("portal:password_change_done"),
        ),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(template_name="portal/auth/password_change_done.html"),
        name="password_change_done",
    ),
    path(
        "accounts/password_reset/",
        auth_views.PasswordResetView.as_view(
            template_name="portal/auth/password_reset_form.html",
            email_template_name="portal/auth/password_reset_email.txt",
            subject_template_name="portal/auth/password_reset_subject.txt",
            success_url=reverse_lazy("portal:password_reset_done"),
        ),
        name="password_reset",
    ),
    path(
        "accounts/password_reset/done/",
        auth_views.PasswordResetDoneView.as_view(template_name="portal/auth/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="portal/auth/password_reset_confirm.html",
            success_url=reverse_lazy("portal:password_reset_complete"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="portal/auth/password_reset_complete.html"),
        name="password_reset_complete",
    ),
]

portal_patterns = [
    path("", home.home, name="home"),
    path("stores/", stores.store_list, name="store_list"),
    path("stores/new/", stores.store_create, name="store_create"),
    path("stores/<int:pk>/", stores.store_detail, name="store_detail"),
    path("stores/<int:pk>/rename/", stores.store_rename, name="store_rename"),
    path("stores/<int:pk>/delete/", stores.store_delete, name="store_delete"),
    path("stores/<int:store_pk>/pos/new/", stores.pos_create, name="pos_create"),
    path("pos/<int:pk>/", stores.pos_detail, name="pos_detail"),
    path("pos/<int:pk>/rename/", stores.pos_rename, name="pos_rename"),
    path("pos/<int:pk>/rotate/", stores.pos_rotate, name="pos_rotate"),
    path("pos/<int:pk>/delete/", stores.pos_delete, name="pos_delete"),
    path("merchants/", activation.merchant_list, name="merchant_list"),
    path("merchants/<int:pk>/", activation.merchant_detail, name="merchant_detail"),
    path("cloud-connector/", activation.cloud_connector, name="cloud_connector"),
    path(
        "cloud-connector/merchant-aggregators/<int:pk>/<str:action>/",
        activation.aggregator_switch,
        name="aggregator_switch",
    ),
    path("cloud-connector/merchants/<int:pk>/<str:action>/", activation.merchant_switch, name="merchant_switch"),
    path("applications/", applications.application_list, name="application_list"),
    path("applications/new/", applications.application_create, name="application_create"),
    path("applications/<int:pk>/", applications.application_detail, name="application_detail"),
    path("applications/<int:pk>/rotate/", applications.application_rotate, name="application_rotate"),
    path("applications/<int:pk>/delete/", applications.application_delete, name="application_delete"),
    path("devices/", devices.device_list, name="device_list"),
    path("devices/rows/", devices.device_rows, name="device_rows"),
    path("devices/export.csv", devices.device_export, name="device_export"),
    path("devices/<int:pk>/", devices.device_detail, name="device_detail"),
    path("devices/<int:pk>/state/", devices.device_state_fragment, name="device_state"),
    path("devices/<int:pk>/timeline/", devices.device_timeline_fragment, name="device_timeline"),
    path("devices/<int:pk>/cloud-connector/<str:action>/", devices.device_switch, name="device_switch"),
    path("devices/<int:pk>/end-session/", devices.device_session_end_view, name="device_session_end"),
    path("devices/<int:pk>/certificates/new/", certificates.certificate_enrol, name="certificate_enrol"),
    path(
        "devices/<int:pk>/certificates/<int:certificate_pk>/remove/",
        certificates.certificate_remove,
        name="certificate_remove",
    ),
    path("devices/<int:pk>/require-mtls/<str:action>/", certificates.require_mtls, name="require_mtls"),
    path("webhooks/", webhooks.webhook_list, name="webhook_list"),
    path("webhooks/new/", webhooks.webhook_create, name="webhook_create"),
    path("webhooks/<int:pk>/", webhooks.webhook_detail, name="webhook_detail"),
    path("webhooks/<int:pk>/edit/", webhooks.webhook_edit, name="webhook_edit"),
    path("webhooks/<int:pk>/rotate/", webhooks.webhook_rotate, name="webhook_rotate"),
    path("webhooks/<int:pk>/delete/", webhooks.webhook_delete, name="webhook_delete"),
    path("webhooks/<int:pk>/deliveries/<int:delivery_pk>/retry/", webhooks.webhook_retry, name="webhook_retry"),
    path("team/", team.team_list, name="team_list"),
    path("team/invite/", team.team_invite, name="team_invite"),
    path("team/<int:pk>/", team.team_member, name="team_member"),
    path("team/<int:pk>/role/", team.team_member_role, name="team_member_role"),
    path("team/<int:pk>/link/", team.team_member_link, name="team_member_link"),
    path("team/<int:pk>/<str:action>/", team.team_member_switch, name="team_member_switch"),
]

static_patterns = [
    path("favicon.ico", static.favicon, name="favicon"),
    re_path(rf"^{settings.STATIC_URL.strip('/')}/(?P<path>.+)$", static.static_asset, name="static_asset"),
]

urlpatterns = auth_patterns + portal_patterns + static_patterns
