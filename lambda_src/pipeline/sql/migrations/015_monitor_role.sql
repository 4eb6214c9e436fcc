-- pipeline_monitor: the consultant side's login on AWS (PLAYBOOK_DATABASE_URL, through the BI proxy), instead
-- of the cluster's master login. What it does there: polls the ledger (meta.batches) for `playbook ingest` and
-- the backfill, and runs the validation, which reads meta, core and marts and replaces its own run's rows in
-- meta.accuracy_results. So: reads meta, core and marts (objects created later too); inserts and deletes in
-- meta.accuracy_results only (its result_id is an identity column, which needs no grant on its sequence);
-- nothing in staging, no routine, no temporary tables, no CREATE or DDL anywhere. The reports log in as
-- pipeline_reporting, not as this role. Created NOLOGIN like the others; `playbook roles` (locally) and the
-- migrate function (on AWS) give it a login from its secret, playbook/db/monitor.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'pipeline_monitor') then
        create role pipeline_monitor nologin;
    end if;
    execute format('grant connect on database %I to pipeline_monitor', current_database());
end $$;

grant usage on schema meta, core, marts to pipeline_monitor;
grant select on all tables in schema meta, core, marts to pipeline_monitor;
alter default privileges for role playbook_owner in schema meta, core, marts
    grant select on tables to pipeline_monitor;
grant insert, delete on meta.accuracy_results to pipeline_monitor;
