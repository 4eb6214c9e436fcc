-- Procedures are routines but not functions: "all functions in schema" in 004 left PUBLIC its default
-- EXECUTE on them (marts.refresh among them). Revoke it from every routine, and give the ingest role
-- the routines of its schemas, procedures included. (Default privileges on functions already cover
-- procedures created later.)
revoke all on all routines in schema public, meta, staging, core, marts from public;
grant execute on all routines in schema staging, core, meta to pipeline_ingest;
grant execute on procedure marts.refresh(bigint) to pipeline_ingest;
