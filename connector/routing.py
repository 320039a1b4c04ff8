"""WebSocket routes of the Cloud Connector protocol (contract §3-§6).

The session id is a path segment and the endpoint is the rest of the path, so that
`connection_url + E` and `session_url + E` route here for every endpoint E (the root
endpoint `/` is the bare URL, with or without a trailing slash). The endpoint's syntax is
checked by the consumer, which answers a bad one with 4404 instead of a failed handshake;
so does every path outside the four routes.
"""

from django.urls import re_path

from connector.consumers.base import NotFoundConsumer
from connector.consumers.device_listener import DeviceListenerConsumer
from connector.consumers.pos_listener import PosListenerConsumer
from connector.consumers.relay_sockets import DeviceSocketConsumer, PosSessionConsumer

_SESSION = r"(?P<session_id>[A-Za-z0-9_-]{1,64})"
_ENDPOINT = r"(?P<endpoint>/.*)?"

websocket_urlpatterns: list = [
    re_path(r"^cloud-connector/v1/device-listener/?$", DeviceListenerConsumer.as_asgi()),
    re_path(r"^cloud-connector/v1/pos-listener/?$", PosListenerConsumer.as_asgi()),
    re_path(rf"^cloud-connector/v1/device/{_SESSION}{_ENDPOINT}$", DeviceSocketConsumer.as_asgi()),
    re_path(rf"^cloud-connector/v1/session/{_SESSION}{_ENDPOINT}$", PosSessionConsumer.as_asgi()),
    # Any other path, under the prefix or not: accepted and closed with 4404. Without a
    # route, Channels' router raises "No route found" and the handshake fails with a 500.
    re_path(r"", NotFoundConsumer.as_asgi()),
]
