"""ASGI entry point: HTTP (portal, admin, API, OAuth2) and the Cloud Connector WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import re_path  # noqa: E402

from connector.routing import websocket_urlpatterns  # noqa: E402
from portal import server_logs  # noqa: E402
from portal.consumers import DevicePushConsumer  # noqa: E402
from portal.proxies import ProxyTrust  # noqa: E402

server_logs.install()

# The portal's own socket (the devices page's pushed rows), signed in by the session cookie;
# its Origin must be one of ALLOWED_HOSTS, or another site's page could open it with the
# user's cookie. Ahead of the relay's routes, whose last one answers every other path 4404.
portal_websocket_urlpatterns = [
    re_path(r"^ws/portal/devices/$", AllowedHostsOriginValidator(AuthMiddlewareStack(DevicePushConsumer.as_asgi()))),
]

# Outermost: proxy headers count from FORWARDED_ALLOW_IPS only, under daphne and uvicorn alike.
application = ProxyTrust(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": URLRouter([*portal_websocket_urlpatterns, *websocket_urlpatterns]),
        }
    ),
    trusted=settings.FORWARDED_ALLOW_IPS,
)
