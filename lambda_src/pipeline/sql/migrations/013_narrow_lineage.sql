-- Lineage narrowed to what differs per row, as dlt keeps it: the batch that wrote the row (_batch_id), the
-- sheet and row it came from (_sheet, _source_row) and its content hash (_row_hash). What a batch's rows
-- share (source, object and version or API window, times) is its ledger row in meta.batches, written once;
-- a view per table, core.<table>_lineage, shows every row with its full lineage for people and BI tools.
-- A row's last change is its batch's commit; its earlier versions, each with its own batch, are in
-- core.<table>_history.
do $$
declare
    t text;
    cols text;
begin
    foreach t in array array['clients', 'sales', 'payments', 'operating_costs', 'tax', 'interactions'] loop
        -- the sheet a row came from: what followed '#' in its _source_ref (its batch's ref is the rest)
        execute format('alter table core.%I add column _sheet text', t);
        execute format(
            'update core.%I c set _sheet = nullif(substr(c._source_ref, length(b.source_ref) + 2), '''')'
            ' from meta.batches b where b.batch_id = c._batch_id and c._source_ref <> b.source_ref', t);
        execute format('alter table core.%I drop column _source, drop column _source_ref,'
                       ' drop column _loaded_at, drop column _updated_at', t);
        -- a COPY of rows typed in the handler leaves the sheet out: the loading transaction sets it once
        execute format('alter table core.%I alter column _sheet'
                       ' set default nullif(current_setting(''pipeline.sheet'', true), '''')', t);

        -- the history keeps each replaced version in the table's own column order, then when it was replaced
        execute format('alter table core.%I rename to %I', t || '_history', t || '_history_wide');
        execute format('create table core.%I (like core.%I, _replaced_at timestamptz not null)', t || '_history', t);
        select string_agg(quote_ident(attname), ', ' order by attnum) into cols from pg_attribute
         where attrelid = format('core.%I', t)::regclass and attnum > 0 and not attisdropped and attname <> '_sheet';
        execute format(
            'insert into core.%1$I (%2$s, _sheet, _replaced_at) select %2$s,'
            ' nullif(substr(h._source_ref, length(b.source_ref) + 2), ''''), h._replaced_at'
            ' from core.%3$I h left join meta.batches b on b.batch_id = h._batch_id',
            t || '_history', cols, t || '_history_wide');
        execute format('drop table core.%I', t || '_history_wide');
        execute format('create index %I on core.%I (%s)', t || '_history_by_key', t || '_history',
                       (select string_agg(quote_ident(a.attname), ', ' order by k.ord)
                          from pg_index i cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
                          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
                         where i.indrelid = format('core.%I', t)::regclass and i.indisprimary));

        -- every row with its full lineage: its batch's source, object (and sheet), version and commit
        execute format(
            'create view core.%I as select c.*, b.source as _source,'
            ' b.source_ref || coalesce(''#'' || c._sheet, '''') as _source_ref, b.object_key as _object_key,'
            ' b.object_version as _object_version, b.window_from as _window_from, b.window_to as _window_to,'
            ' b.finished_at as _committed_at from core.%I c join meta.batches b on b.batch_id = c._batch_id',
            t || '_lineage', t);
    end loop;
end $$;
