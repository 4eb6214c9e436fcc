-- Batch ids only grow, and a batch's new rows and new row versions go where its table has room, mostly
-- at the end: the rows of one batch lie close together. A BRIN index finds them from a few bytes per
-- range of pages, where a B-tree entry per row cost about a fifth of a large load's merge.
drop index core.clients_by_batch;
create index clients_by_batch on core.clients using brin (_batch_id);
drop index core.sales_by_batch;
create index sales_by_batch on core.sales using brin (_batch_id);
drop index core.payments_by_batch;
create index payments_by_batch on core.payments using brin (_batch_id);
drop index core.operating_costs_by_batch;
create index operating_costs_by_batch on core.operating_costs using brin (_batch_id);
drop index core.tax_by_batch;
create index tax_by_batch on core.tax using brin (_batch_id);
drop index core.interactions_by_batch;
create index interactions_by_batch on core.interactions using brin (_batch_id);
