-- Every attempt at a batch is visible in the ledger. An attempt writes a 'started' row on its own, before
-- the batch's transaction begins; the batch's transaction finishes it as 'committed' together with the data,
-- or a failure finishes it as 'failed' with the reason. An attempt that died (the function killed, out of
-- memory, the connection lost) stays 'started' until its expires_at, after which it is 'abandoned'.
-- plan: what the loader decided about the delivery and why (the day/month order of its dates, how its
-- quotes were read, its encoding), for a person to read later.
alter table meta.batches drop constraint if exists batches_status_check;
update meta.batches set status = 'abandoned' where status = 'running';
alter table meta.batches add constraint batches_status_check
    check (status in ('started', 'committed', 'failed', 'abandoned'));
alter table meta.batches add column expires_at timestamptz;
alter table meta.batches add column plan jsonb not null default '{}'::jsonb;
create index batches_started on meta.batches (expires_at) where status = 'started';
