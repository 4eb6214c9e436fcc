-- Batch ids only grow, and a batch's new rows and new row versions go where its table has room, mostly
-- at the end: the rows of one batch lie close together. A BRIN index finds them from a few bytes per
-- range of pages, where a B-tree entry per row cost about a fifth of a large load's merge.
do $$
declare
    t text;
begin
    foreach t in array array['clients', 'sales', 'payments', 'operating_costs', 'tax', 'interactions'] loop
        execute format('drop index core.%I', t || '_by_batch');
        execute format('create index %I on core.%I using brin (_batch_id)', t || '_by_batch', t);
    end loop;
end $$;
