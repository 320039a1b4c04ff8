from django.db import migrations


def create_catalog(apps, schema_editor):
    ServiceDomain = apps.get_model("connector", "ServiceDomain")
    Service = apps.get_model("connector", "Service")
    domain, _ = ServiceDomain.objects.get_or_create(code="retail-api", defaults={"name": "Retail API"})
    Service.objects.get_or_create(code="cloud-connector", defaults={"domain": domain, "name": "Cloud Connector"})


class Migration(migrations.Migration):
    dependencies = [("connector", "0001_initial")]
    operations = [migrations.RunPython(create_catalog, migrations.RunPython.noop)]
