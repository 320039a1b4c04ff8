from datetime import timedelta

from django.db import migrations, models
from django.db.models import F

from connector.conf import connector_settings


def offline_sessions_deadline(apps, schema_editor):
    """Offline sessions written before the column: their deadline as it was computed then."""
    DeviceSession = apps.get_model("connector", "DeviceSession")
    DeviceSession.objects.filter(state="offline", offline_at__isnull=False).update(
        offline_until=F("offline_at") + timedelta(seconds=connector_settings.GRACE_PERIOD)
    )


class Migration(migrations.Migration):
    dependencies = [("connector", "0008_certificates_local_url")]

    operations = [
        migrations.AddField(
            model_name="devicesession",
            name="offline_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(offline_sessions_deadline, migrations.RunPython.noop),
    ]
