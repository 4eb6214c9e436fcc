-- A core row's _batch_id names the ledger row of the batch that wrote it. The loader writes both in the
-- same transaction, so the link holds by construction, and validation checks it (ledger against core).
-- The foreign key cost one trigger call per loaded row: it nearly doubled the merge of a large export.
alter table core.clients drop constraint clients__batch_id_fkey;
alter table core.sales drop constraint sales__batch_id_fkey;
alter table core.payments drop constraint payments__batch_id_fkey;
alter table core.operating_costs drop constraint operating_costs__batch_id_fkey;
alter table core.tax drop constraint tax__batch_id_fkey;
alter table core.interactions drop constraint interactions__batch_id_fkey;
