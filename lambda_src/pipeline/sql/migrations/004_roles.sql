-- Who may do what. Three roles:
--   playbook_owner      owns the database and every object, runs the migrations (it applies this file);
--   pipeline_ingest     the Lambdas: DML on staging, core and meta, temporary tables, no DDL; it may also
--                       run the marts' refresh procedure (which refreshes with the owner's rights);
--   pipeline_reporting  BI tools and reports: reads marts, nothing else.
-- Roles are created NOLOGIN here; `playbook roles` gives them a login and a password kept in Secrets
-- Manager, so no password is ever in the repository.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'pipeline_ingest') then
        create role pipeline_ingest nologin;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'pipeline_reporting') then
        create role pipeline_reporting nologin;
    end if;
    -- the database: nothing for PUBLIC; connect for both, temporary tables for the loader only
    execute format('revoke all on database %I from public', current_database());
    execute format('grant connect, temporary on database %I to pipeline_ingest', current_database());
    execute format('grant connect on database %I to pipeline_reporting', current_database());
end $$;

-- PUBLIC gets nothing anywhere: no schema, no table, no function (functions are executable by PUBLIC
-- unless revoked, now and for every function created later).
revoke all on schema public, meta, staging, core, marts from public;
revoke all on all tables in schema public, meta, staging, core, marts from public;
revoke all on all sequences in schema public, meta, staging, core, marts from public;
revoke all on all functions in schema public, meta, staging, core, marts from public;
alter default privileges for role playbook_owner revoke execute on functions from public;

-- pipeline_ingest: usage and DML on staging, core and meta (truncate too on staging, its scratch space),
-- sequences, functions; the same for everything created there later. No CREATE on any schema.
grant usage on schema staging, core, meta to pipeline_ingest;
grant select, insert, update, delete on all tables in schema staging, core, meta to pipeline_ingest;
grant truncate on all tables in schema staging to pipeline_ingest;
grant usage, select on all sequences in schema staging, core, meta to pipeline_ingest;
grant execute on all functions in schema staging, core, meta to pipeline_ingest;
alter default privileges for role playbook_owner in schema staging, core, meta
    grant select, insert, update, delete on tables to pipeline_ingest;
alter default privileges for role playbook_owner in schema staging grant truncate on tables to pipeline_ingest;
alter default privileges for role playbook_owner in schema staging, core, meta
    grant usage, select on sequences to pipeline_ingest;
alter default privileges for role playbook_owner in schema staging, core, meta
    grant execute on functions to pipeline_ingest;
-- the refresh Lambda runs as the ingest role: it may call the procedure, not read the marts
grant usage on schema marts to pipeline_ingest;
grant execute on function marts.refresh_order(), marts.refresh_one(text) to pipeline_ingest;
grant execute on procedure marts.refresh(bigint) to pipeline_ingest;

-- pipeline_reporting: marts only, including marts created later
grant usage on schema marts to pipeline_reporting;
grant select on all tables in schema marts to pipeline_reporting;
grant execute on function marts.top_clients(date, date, int) to pipeline_reporting;
alter default privileges for role playbook_owner in schema marts grant select on tables to pipeline_reporting;
