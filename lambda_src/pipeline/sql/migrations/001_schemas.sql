-- The four schemas and the ledger. meta: what happened; staging: per-batch scratch; core: the canonical
-- model with lineage on every row; marts: what reports read.
create schema if not exists meta;
create schema if not exists staging;
create schema if not exists core;
create schema if not exists marts;

revoke all on schema meta, staging, core, marts from public;
revoke create on schema public from public;

create table meta.batches (
    batch_id           bigint generated always as identity primary key,
    source             text        not null,
    source_kind        text        not null,
    target_table       text        not null,
    source_ref         text        not null,
    object_key         text,
    object_etag        text,
    object_version     text,
    content_sha256     text,
    rows_read          bigint      not null default 0,
    rows_inserted      bigint      not null default 0,
    rows_updated       bigint      not null default 0,
    rows_unchanged     bigint      not null default 0,
    rows_duplicate     bigint      not null default 0,
    rows_quarantined   bigint      not null default 0,
    rows_skipped       bigint      not null default 0,
    amount_in          numeric,
    amount_loaded      numeric,
    amount_quarantined numeric,
    amount_duplicate   numeric,
    started_at         timestamptz not null default clock_timestamp(),
    finished_at        timestamptz,
    status             text        not null check (status in ('running', 'committed', 'failed')),
    error              text,
    request_id         text,
    window_from        timestamptz,
    window_to          timestamptz
);
-- One committed batch per delivered object: the same key with the same content loads once.
create unique index batches_one_load_per_object
    on meta.batches (source, object_key, content_sha256) where status = 'committed' and object_key is not null;
create index batches_by_sha on meta.batches (content_sha256) where status = 'committed';
create index batches_by_source on meta.batches (source, finished_at);

create table meta.quarantine (
    quarantine_id bigint generated always as identity primary key,
    batch_id      bigint      not null references meta.batches (batch_id),
    source        text        not null,
    source_ref    text        not null,
    source_row    bigint,
    raw           jsonb       not null,
    reason        text        not null,
    reason_code   text        not null,
    created_at    timestamptz not null default now()
);
create index quarantine_by_batch on meta.quarantine (batch_id);

create table meta.source_state (
    source      text primary key,
    cursor      jsonb       not null,
    batch_id    bigint references meta.batches (batch_id),
    updated_at  timestamptz not null default now()
);

create table meta.accuracy_results (
    result_id   bigint generated always as identity primary key,
    run_id      text        not null,
    check_name  text        not null,
    subject     text,
    status      text        not null check (status in ('pass', 'fail', 'warn')),
    observed    numeric,
    threshold   numeric,
    details     jsonb       not null default '{}'::jsonb,
    checked_at  timestamptz not null default now()
);
create index accuracy_by_run on meta.accuracy_results (run_id);
