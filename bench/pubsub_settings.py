"""Settings for `bench/scale.py`'s run on channels_redis' RedisPubSubChannelLayer: the
project's settings with only the channel layer swapped (everything else, REDIS_URL included,
as in portal/settings.py)."""

from portal.settings import *  # noqa: F403
from portal.settings import REDIS_URL

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL}]},
    }
}
