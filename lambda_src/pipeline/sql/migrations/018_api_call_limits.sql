-- When a REST API takes calls again, by base URL, as its response headers (or a 429) said: the limit outlives
-- the function instance that read it, so a cold start waits as a warm one does, and a run that stopped for the
-- limit tells the next one when to call. Written at the end of every API invocation (pipeline.sources.rest_api).
create table meta.api_call_limits (
    base_url   text primary key,
    source     text        not null,
    resume_at  timestamptz not null,
    updated_at timestamptz not null default now()
);
