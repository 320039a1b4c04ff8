"""The device page's certificate card (templates/portal/_device_certificates.html)."""

from __future__ import annotations

from django import template

from portal.terminal_config import MtlsTerminalConfig, mtls_terminal_config

register = template.Library()


@register.simple_tag(takes_context=True)
def mtls_terminal_config_for(context) -> MtlsTerminalConfig:
    """The ws_client block of an mTLS terminal, for this deployment's public URL."""
    return mtls_terminal_config(request=context["request"])
