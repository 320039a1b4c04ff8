# The unique serial constraint's message no longer describes the device holding the serial
# (connector.serial_refusals); no database change.

import django.db.models.functions.text
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("connector", "0003_session_sockets"),
    ]

    operations = [
        migrations.AlterConstraint(
            model_name="device",
            name="serial_unique_per_make_in_tenant",
            constraint=models.UniqueConstraint(
                models.F("tenant"),
                django.db.models.functions.text.Lower("make"),
                django.db.models.functions.text.Lower("serial"),
                name="serial_unique_per_make_in_tenant",
                violation_error_message="This serial number cannot be used.",
            ),
        ),
    ]
