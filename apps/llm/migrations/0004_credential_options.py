from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0003_catalog_local_embedding"),
    ]

    operations = [
        migrations.AddField(
            model_name="providercredential",
            name="options",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
