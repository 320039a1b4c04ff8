from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from connector.relay import registry
        from portal import health, login_throttle

        user_login_failed.connect(login_throttle.on_login_failed, dispatch_uid="portal.login_failed")
        user_logged_in.connect(login_throttle.on_logged_in, dispatch_uid="portal.logged_in")
        # /readyz answers 503 while the relay of this worker shuts down (drains its sockets).
        health.register_drain_source(registry.shutting_down)
