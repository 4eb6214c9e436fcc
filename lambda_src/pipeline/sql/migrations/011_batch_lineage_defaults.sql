-- A load that types its rows in the handler COPYs them straight into their core table, each with its own
-- values, row number and content hash. What every row of the batch shares (which batch, source and object
-- it came from) is not sent a million times: the loading transaction sets it once (set_config(...,
-- is_local => true)), and these defaults read it. A statement that leaves these columns out without
-- those settings fails: an unset setting reads as null, which the columns refuse.
do $$
declare
    t text;
begin
    foreach t in array array['clients', 'sales', 'payments', 'operating_costs', 'tax', 'interactions'] loop
        execute format(
            'alter table core.%I'
            ' alter column _batch_id set default nullif(current_setting(''pipeline.batch_id'', true), '''')::bigint,'
            ' alter column _source set default nullif(current_setting(''pipeline.source'', true), ''''),'
            ' alter column _source_ref set default nullif(current_setting(''pipeline.source_ref'', true), '''')',
            t);
    end loop;
end $$;
