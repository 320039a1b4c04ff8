from django.apps import AppConfig


class ConnectorConfig(AppConfig):
    name = "connector"
    verbose_name = "Cloud Connector"

    def ready(self) -> None:
        # accounts announces revocations through signals and never imports the relay: the
        # relay subscribes here, so that every process that loads the app reacts.
        from connector import conf  # noqa: F401  (registers the CLOUD_CONNECTOR settings check)
        from connector.events import accounts_signals_connect

        accounts_signals_connect()
