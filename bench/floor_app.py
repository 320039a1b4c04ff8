"""The floor of the control plane: the same WebSocket steps as a registration and a session,
answered by a bare ASGI application with no framework, no authentication, no database and
no Redis, served by uvicorn exactly as `make serve` serves Cloud Connector.

What it costs is what any Python server on this stack pays for the handshakes and the JSON
messages alone; Cloud Connector's CPU per operation minus this is what its own work costs
(bench/control.py prints both).

    uvicorn bench.floor_app:app   (bench/control.py starts it with portal.serve's flags)
"""

from __future__ import annotations

import json

DEVICE_LISTENER = "/cloud-connector/v1/device-listener"
POS_LISTENER = "/cloud-connector/v1/pos-listener"


def _host(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return value.decode("latin-1")
    return "127.0.0.1"


async def app(scope: dict, receive, send) -> None:
    if scope["type"] == "http":
        await _http(receive, send)
        return
    if scope["type"] != "websocket":
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    path = scope["path"]
    base = f"ws://{_host(scope)}/cloud-connector/v1"
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            continue
        request = json.loads(text)["request"]
        resource = request["resource"]
        if path == DEVICE_LISTENER:
            answer = {
                "status": "ok",
                "session_id": resource["tsn"],
                "connection_url": f"{base}/device/{resource['tsn']}",
                "authorization_header": {"Authorization": "Bearer floor"},
                "endpoints": ["/"],
                "expires_in": 300,
            }
        elif path == POS_LISTENER:
            answer = {"status": "ok", "session_url": f"{base}/session/{resource['tsn']}", "endpoints": ["/"]}
        else:
            continue  # a device or session socket: frames are not part of the floor
        await send({"type": "websocket.send", "text": json.dumps({"response": {**request, "resource": answer}})})
        if path == DEVICE_LISTENER:
            await send({"type": "websocket.close", "code": 1000})
            return


async def _http(receive, send) -> None:
    """The token endpoint, for the benchmark's one token fetch."""
    while (await receive()).get("more_body"):
        pass
    body = json.dumps({"access_token": "floor", "token_type": "Bearer", "expires_in": 3600}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
