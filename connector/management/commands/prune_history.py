"""Delete the connection history and the recorded events older than CC_HISTORY_DAYS.

    python manage.py prune_history [--days N] [--batch-size N]

Run it daily from cron (docs/operations.md, "History pruning"). Open connections, each
device's newest event and events whose webhook deliveries are still pending or retrying are
kept (connector.pruning says why).
"""

from __future__ import annotations

from argparse import ArgumentTypeError

from django.core.management.base import BaseCommand, CommandParser

from connector.conf import connector_settings
from connector.protocol import timestamp
from connector.pruning import DEFAULT_BATCH_SIZE, history_prune


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        # argparse turns this into a usage error (a CommandError under call_command).
        raise ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


class Command(BaseCommand):
    help = "Delete connection history and recorded events older than CC_HISTORY_DAYS (default 30) days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=_positive,
            default=None,
            help="Keep this many days instead of CC_HISTORY_DAYS.",
        )
        parser.add_argument(
            "--batch-size",
            type=_positive,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows deleted per transaction (default {DEFAULT_BATCH_SIZE}).",
        )

    def handle(self, *args, days: int | None, batch_size: int, **options) -> None:
        days = days if days is not None else connector_settings.HISTORY_DAYS
        pruned = history_prune(days=days, batch_size=batch_size)
        self.stdout.write(
            f"Pruned the history older than {days} days (before {timestamp(pruned.cutoff)}): "
            f"{pruned.connections} connections, {pruned.events} events, "
            f"{pruned.deliveries} webhook deliveries and {pruned.attempts} delivery attempts deleted."
        )
        if pruned.kept_for_delivery:
            self.stdout.write(
                f"Kept {pruned.kept_for_delivery} older events whose webhook deliveries are still pending "
                "or retrying; a later run deletes them once they are delivered or given up."
            )
