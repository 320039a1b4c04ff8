"""Enqueue again the webhook deliveries whose task was lost (connector.webhooks.delivery.sweep).

    python manage.py webhooks_sweep

The serving processes run the same sweep in their housekeeping; this command is for cron on
a deployment that runs only workers, or to recover at once after workers were killed.
Idempotent: running it twice in a row enqueues nothing the second time.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from connector.webhooks.delivery import sweep


class Command(BaseCommand):
    help = "Enqueue again the webhook deliveries overdue by more than two minutes (their task was lost)."

    def handle(self, *args: Any, **options: Any) -> None:
        count = sweep()
        self.stdout.write(f"{count} webhook deliveries enqueued again")
