"""Billing's tables (apps/billing/models.py) and the ledger's append-only guard.

UsageRecord rows are never changed: PostgreSQL refuses an UPDATE, whoever issues it,
and refuses a DELETE when the transaction commits unless the row's organization is
gone too (deleting an organization deletes its ledger first, in one transaction).
"""

import apps.billing.models
import django.db.models.deletion
from decimal import Decimal
from django.db import migrations, models


APPEND_ONLY = """
CREATE OR REPLACE FUNCTION billing_usagerecord_refuse_update() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the usage ledger is append-only: record % cannot be changed', OLD.id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_usagerecord_no_update
    BEFORE UPDATE ON billing_usagerecord
    FOR EACH ROW EXECUTE FUNCTION billing_usagerecord_refuse_update();

CREATE OR REPLACE FUNCTION billing_usagerecord_delete_only_with_organization() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tenancy_organization WHERE id = OLD.organization_id) THEN
        RAISE EXCEPTION 'the usage ledger is append-only: record % can only go with its organization', OLD.id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER billing_usagerecord_delete_with_organization
    AFTER DELETE ON billing_usagerecord
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_usagerecord_delete_only_with_organization();
"""

REMOVE_APPEND_ONLY = """
DROP TRIGGER IF EXISTS billing_usagerecord_delete_with_organization ON billing_usagerecord;
DROP TRIGGER IF EXISTS billing_usagerecord_no_update ON billing_usagerecord;
DROP FUNCTION IF EXISTS billing_usagerecord_delete_only_with_organization();
DROP FUNCTION IF EXISTS billing_usagerecord_refuse_update();
"""


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('tenancy', '0003_organization_sso'),
    ]

    operations = [
        migrations.CreateModel(
            name='StripeEvent',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event_id', models.CharField(max_length=100, unique=True)),
                ('type', models.CharField(max_length=100)),
                ('object_id', models.CharField(blank=True, max_length=100)),
                ('created', models.BigIntegerField()),
                ('payload', models.JSONField()),
                ('received_at', models.DateTimeField(auto_now_add=True)),
                ('processed_at', models.DateTimeField(blank=True, null=True)),
                ('outcome', models.TextField(blank=True)),
            ],
        ),
        migrations.CreateModel(
            name='Invoice',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('stripe_invoice_id', models.CharField(max_length=100, unique=True)),
                ('number', models.CharField(blank=True, max_length=100)),
                ('status', models.CharField(max_length=30)),
                ('currency', models.CharField(default='usd', max_length=10)),
                ('amount_due', models.DecimalField(decimal_places=2, default=Decimal('0'), max_digits=14)),
                ('amount_paid', models.DecimalField(decimal_places=2, default=Decimal('0'), max_digits=14)),
                ('total', models.DecimalField(decimal_places=2, default=Decimal('0'), max_digits=14)),
                ('period_start', models.DateTimeField(blank=True, null=True)),
                ('period_end', models.DateTimeField(blank=True, null=True)),
                ('hosted_invoice_url', models.URLField(blank=True, max_length=1000)),
                ('invoice_pdf', models.URLField(blank=True, max_length=1000)),
                ('created', models.DateTimeField()),
                ('stripe_version', models.BigIntegerField(default=0)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='invoices', to='tenancy.organization')),
            ],
            options={
                'ordering': ['-created'],
            },
        ),
        migrations.CreateModel(
            name='Plan',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.SlugField(unique=True)),
                ('name', models.CharField(max_length=100)),
                ('kind', models.CharField(choices=[('free', 'Free'), ('payg', 'Pay as you go'), ('subscription', 'Subscription'), ('reserved', 'Reserved capacity'), ('custom', 'Custom')], max_length=20)),
                ('description', models.TextField(blank=True)),
                ('monthly_fee', models.DecimalField(decimal_places=2, default=Decimal('0'), max_digits=12)),
                ('features', models.JSONField(blank=True, default=list)),
                ('limits', models.JSONField(blank=True, default=dict)),
                ('included', models.JSONField(blank=True, default=dict)),
                ('unit_prices', models.JSONField(blank=True, default=dict)),
                ('stripe_price_id', models.CharField(blank=True, max_length=100)),
                ('public', models.BooleanField(default=True)),
                ('position', models.PositiveIntegerField(default=0)),
                ('archived', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('organization', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='custom_plans', to='tenancy.organization')),
            ],
            options={
                'ordering': ['position', 'key'],
            },
        ),
        migrations.CreateModel(
            name='BillingAccount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('status', models.CharField(choices=[('active', 'Active'), ('trialing', 'Trialing'), ('past_due', 'Past due'), ('canceled', 'Canceled'), ('incomplete', 'Incomplete')], default='active', max_length=20)),
                ('stripe_customer_id', models.CharField(blank=True, db_index=True, max_length=100)),
                ('stripe_subscription_id', models.CharField(blank=True, db_index=True, max_length=100)),
                ('subscription_version', models.BigIntegerField(default=0)),
                ('current_period_start', models.DateTimeField(blank=True, null=True)),
                ('current_period_end', models.DateTimeField(blank=True, null=True)),
                ('cancel_at_period_end', models.BooleanField(default=False)),
                ('limit_overrides', models.JSONField(blank=True, default=dict)),
                ('feature_overrides', models.JSONField(blank=True, default=dict)),
                ('alert_thresholds', models.JSONField(blank=True, default=apps.billing.models.default_alert_thresholds)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('organization', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='billing_account', to='tenancy.organization')),
                ('plan', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='accounts', to='billing.plan')),
            ],
        ),
        migrations.CreateModel(
            name='QuotaAlert',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('limit', models.CharField(max_length=40)),
                ('threshold', models.PositiveSmallIntegerField()),
                ('period_start', models.DateField()),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='quota_alerts', to='tenancy.organization')),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('organization', 'limit', 'threshold', 'period_start'), name='billing_quota_alert_once')],
            },
        ),
        migrations.CreateModel(
            name='UsageDaily',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('llm_input_tokens', 'LLM input tokens'), ('llm_output_tokens', 'LLM output tokens'), ('llm_cached_tokens', 'LLM cached input tokens'), ('sandbox_seconds', 'Sandbox seconds'), ('storage_gb_hours', 'Storage GB-hours')], max_length=30)),
                ('model', models.CharField(blank=True, default='', max_length=100)),
                ('source_type', models.CharField(choices=[('agent_run', 'Agent run'), ('api_key', 'API key'), ('workspace', 'Workspace'), ('user', 'User'), ('system', 'System')], max_length=20)),
                ('source_id', models.CharField(blank=True, default='', max_length=64)),
                ('quantity', models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=24)),
                ('amount', models.DecimalField(decimal_places=8, default=Decimal('0'), max_digits=20)),
                ('day', models.DateField()),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenancy.organization')),
            ],
            options={
                'indexes': [models.Index(fields=['organization', 'day'], name='billing_usage_daily_org')],
                'constraints': [models.UniqueConstraint(fields=('organization', 'day', 'kind', 'model', 'source_type', 'source_id'), name='billing_usage_daily_key')],
            },
        ),
        migrations.CreateModel(
            name='UsageHourly',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('llm_input_tokens', 'LLM input tokens'), ('llm_output_tokens', 'LLM output tokens'), ('llm_cached_tokens', 'LLM cached input tokens'), ('sandbox_seconds', 'Sandbox seconds'), ('storage_gb_hours', 'Storage GB-hours')], max_length=30)),
                ('model', models.CharField(blank=True, default='', max_length=100)),
                ('source_type', models.CharField(choices=[('agent_run', 'Agent run'), ('api_key', 'API key'), ('workspace', 'Workspace'), ('user', 'User'), ('system', 'System')], max_length=20)),
                ('source_id', models.CharField(blank=True, default='', max_length=64)),
                ('quantity', models.DecimalField(decimal_places=6, default=Decimal('0'), max_digits=24)),
                ('amount', models.DecimalField(decimal_places=8, default=Decimal('0'), max_digits=20)),
                ('hour', models.DateTimeField()),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenancy.organization')),
            ],
            options={
                'indexes': [models.Index(fields=['organization', 'hour'], name='billing_usage_hourly_org')],
                'constraints': [models.UniqueConstraint(fields=('organization', 'hour', 'kind', 'model', 'source_type', 'source_id'), name='billing_usage_hourly_key')],
            },
        ),
        migrations.CreateModel(
            name='UsageRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('llm_input_tokens', 'LLM input tokens'), ('llm_output_tokens', 'LLM output tokens'), ('llm_cached_tokens', 'LLM cached input tokens'), ('sandbox_seconds', 'Sandbox seconds'), ('storage_gb_hours', 'Storage GB-hours')], max_length=30)),
                ('quantity', models.DecimalField(decimal_places=6, max_digits=20)),
                ('unit', models.CharField(choices=[('token', 'token'), ('second', 'second'), ('GB-hour', 'GB-hour')], max_length=10)),
                ('unit_price', models.DecimalField(decimal_places=10, default=Decimal('0'), max_digits=16)),
                ('amount', models.DecimalField(decimal_places=8, default=Decimal('0'), max_digits=16)),
                ('model', models.CharField(blank=True, max_length=100)),
                ('source_type', models.CharField(choices=[('agent_run', 'Agent run'), ('api_key', 'API key'), ('workspace', 'Workspace'), ('user', 'User'), ('system', 'System')], max_length=20)),
                ('source_id', models.CharField(blank=True, max_length=64)),
                ('user_id', models.BigIntegerField(blank=True, null=True)),
                ('idempotency_key', models.CharField(max_length=200, unique=True)),
                ('occurred_at', models.DateTimeField()),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenancy.organization')),
            ],
            options={
                'indexes': [models.Index(fields=['organization', 'occurred_at'], name='billing_usage_org_time')],
            },
        ),
        migrations.CreateModel(
            name='UsageReport',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('kind', models.CharField(choices=[('llm_input_tokens', 'LLM input tokens'), ('llm_output_tokens', 'LLM output tokens'), ('llm_cached_tokens', 'LLM cached input tokens'), ('sandbox_seconds', 'Sandbox seconds'), ('storage_gb_hours', 'Storage GB-hours')], max_length=30)),
                ('event_name', models.CharField(max_length=100)),
                ('quantity', models.DecimalField(decimal_places=6, max_digits=24)),
                ('idempotency_key', models.CharField(max_length=200, unique=True)),
                ('covers', models.JSONField(blank=True, default=dict)),
                ('status', models.CharField(choices=[('pending', 'Pending'), ('sent', 'Sent'), ('failed', 'Failed')], default='pending', max_length=10)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('next_attempt_at', models.DateTimeField(blank=True, null=True)),
                ('last_error', models.TextField(blank=True)),
                ('sent_at', models.DateTimeField(blank=True, null=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('organization', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='tenancy.organization')),
            ],
            options={
                'indexes': [models.Index(fields=['status', 'next_attempt_at'], name='billing_usage_report_due')],
            },
        ),
        migrations.RunSQL(APPEND_ONLY, REMOVE_APPEND_ONLY),
    ]
