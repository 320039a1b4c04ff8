"""Sign-in: people land on the portal's overview, platform staff on the admin."""

from __future__ import annotations

from django.contrib.auth.views import LoginView
from django.urls import reverse

from portal.forms import PortalAuthenticationForm


class PortalLoginView(LoginView):
    template_name = "portal/auth/login.html"
    authentication_form = PortalAuthenticationForm
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        # Only when no `next` was asked for: staff may still open portal pages by link.
        if self.request.user.is_staff:
            return reverse("admin:index")
        return super().get_default_redirect_url()
