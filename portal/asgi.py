"""ASGI entry point: HTTP (portal, admin, API, OAuth2) and the Cloud Connector WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from connector.routing import websocket_urlpatterns  # noqa: E402
from portal import server_logs  # noqa: E402

server_logs.install()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
