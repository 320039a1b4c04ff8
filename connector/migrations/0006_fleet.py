# The fleet page (issue 12): each worker's heartbeat carries a snapshot of its metric sources,
# refusals are tallied per worker, minute and reason, and a proxy model gives the page its
# `view_fleet` permission.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("connector", "0005_session_registered_by"),
    ]

    operations = [
        migrations.AddField(
            model_name="nodeheartbeat",
            name="snapshot",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.CreateModel(
            name="RefusalTally",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("node", models.CharField(max_length=100)),
                ("minute", models.DateTimeField()),
                ("reason", models.CharField(max_length=80)),
                ("count", models.PositiveIntegerField()),
            ],
            options={
                "indexes": [models.Index(fields=["minute"], name="refusal_tally_minute")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("node", "minute", "reason"), name="one_tally_per_node_minute_reason"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="Fleet",
            fields=[],
            options={
                "verbose_name": "fleet",
                "verbose_name_plural": "fleet",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("connector.nodeheartbeat",),
        ),
    ]
