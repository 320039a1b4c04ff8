"""Cloud Connector with the held-answers test taken out of the frame path, for bench/held.py
only: `RelayConsumer.forward` rebuilt from its own source without the two lines that send a
frame behind the held ones (`if self.held is not None and not after_held: ...`), everything
else exactly as shipped. The difference between this and portal.asgi:application is what the
held-answers code (v1.1 §13) costs a frame when nothing is held.

    uvicorn held_off_app:application   (bench/held.py starts it with portal.serve's flags)
"""

from __future__ import annotations

import importlib
import inspect
import textwrap

from portal.asgi import application  # noqa: F401 - served by uvicorn; sets Django up first

# Imported once Django is set up (its models).
relay_sockets = importlib.import_module("connector.consumers.relay_sockets")

HELD_TEST = (
    "        if self.held is not None and not after_held:\n"
    "            return await held.forward_after_held(self, out)\n"
)


def _forward_without_the_held_test():
    source = inspect.getsource(relay_sockets.RelayConsumer.forward)
    if HELD_TEST not in source:
        raise RuntimeError("RelayConsumer.forward changed: update bench/held_off_app.py's HELD_TEST")
    namespace: dict = {}
    exec(textwrap.dedent(source.replace(HELD_TEST, "")), vars(relay_sockets), namespace)  # noqa: S102
    return namespace["forward"]


relay_sockets.RelayConsumer.forward = _forward_without_the_held_test()
