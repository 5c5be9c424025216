"""A run's events are append-only, enforced by PostgreSQL itself.

- UPDATE of an event is refused, whoever issues it.
- DELETE of an event is checked when the transaction commits (a deferred constraint
  trigger): it is refused unless the event's run is gone too. Deleting a run works
  (Django deletes its events, then the run, in one transaction), deleting single
  events does not. Dropping a tenant's schema removes the table whole and is unaffected.

The run is looked up in the event's own schema (TG_TABLE_SCHEMA), not through the
search path, so the check is right whichever schema the session has selected at commit,
and one pair of functions in the public schema serves every organization's table (a new
organization's schema is copied from the template with its triggers; see
apps/tenancy/provisioning.py). Each tenant's migration replaces the functions under a
transaction-scoped lock, so two schemas migrating at once do not collide.
"""

from django.db import migrations

FORWARD = """
SELECT pg_advisory_xact_lock(hashtext('agents_event_append_only'));

CREATE OR REPLACE FUNCTION public.agents_event_refuse_update() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'agent run events are append-only: event % of run % cannot be changed',
        OLD.seq, OLD.run_id
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER agents_event_no_update
    BEFORE UPDATE ON agents_event
    FOR EACH ROW EXECUTE FUNCTION public.agents_event_refuse_update();

CREATE OR REPLACE FUNCTION public.agents_event_delete_only_with_run() RETURNS trigger AS $$
DECLARE
    run_exists boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.agents_agentrun WHERE id = $1)', TG_TABLE_SCHEMA)
        INTO run_exists USING OLD.run_id;
    IF run_exists THEN
        RAISE EXCEPTION 'agent run events are append-only: event % of run % can only go with its run',
            OLD.seq, OLD.run_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER agents_event_delete_with_run
    AFTER DELETE ON agents_event
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.agents_event_delete_only_with_run();
"""

# The functions stay: other organizations' tables still use them.
BACKWARD = """
DROP TRIGGER IF EXISTS agents_event_delete_with_run ON agents_event;
DROP TRIGGER IF EXISTS agents_event_no_update ON agents_event;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0001_initial"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
