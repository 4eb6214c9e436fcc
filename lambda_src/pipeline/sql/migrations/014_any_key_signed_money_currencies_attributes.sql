-- The model a real SME's data needs.
--   _key         a row's identity: the values of its source's key columns (any combination a source declares,
--                or a row's place in a snapshot file), joined by U+001F. It is the primary key, so a source is
--                no longer bound to the table's own key columns, which become plain, optional columns.
--   _deleted_by  the batch of a snapshot delivery that no longer held the row: deleted at source, kept, and
--                left out of the marts.
--   attributes   further columns a source maps by name (region, channel...), typed, as a JSON object.
--   currency     each money row's currency (sales had one): a column, or the source's or company's default.
--   quantity     a decimal: kilograms and half units are quantities too.
-- Only what a table cannot exist without stays NOT NULL: its date and amount (a client's id). Every row
-- already loaded keeps its values; its _key is its table's natural key, as it was loaded by.
do $$
declare
    t text;
    keys text[];
    key_text text;
    cols text;
    required text[];
    hashed text;
    c record;
begin
    foreach t in array array['clients', 'sales', 'payments', 'operating_costs', 'tax', 'interactions'] loop
        execute format('drop view core.%I', t || '_lineage');
        keys := case t when 'clients' then array['client_id'] when 'sales' then array['order_id', 'line_no']
                       when 'payments' then array['payment_id'] when 'operating_costs' then array['cost_id']
                       when 'tax' then array['period', 'tax_type'] else array['interaction_id'] end;
        select string_agg(format('%I::text', k), ', ') into key_text from unnest(keys) k;

        execute format('alter table core.%I add column _key text, add column _deleted_by bigint,'
                       ' add column attributes jsonb', t);
        if t in ('payments', 'operating_costs') then
            execute format('alter table core.%I add column currency text', t);
        end if;
        if t in ('sales', 'payments', 'operating_costs') then  -- rows that name none: their batch's currency
            execute format('alter table core.%I alter column currency'
                           ' set default nullif(current_setting(''pipeline.currency'', true), '''')', t);
        end if;
        execute format('update core.%I set _key = concat_ws(chr(31), %s)', t, key_text);
        execute format('alter table core.%I alter column _key set not null', t);
        execute format('alter table core.%I drop constraint %I', t, t || '_pkey');
        execute format('alter table core.%I add constraint %I primary key (_key)', t, t || '_pkey');

        required := case t when 'clients' then array['client_id'] when 'sales' then array['order_date', 'amount']
                           when 'payments' then array['payment_date', 'amount']
                           when 'operating_costs' then array['cost_date', 'amount']
                           when 'tax' then array['period', 'amount'] else array['occurred_at'] end;
        for c in select a.attname from pg_attribute a
                 where a.attrelid = format('core.%I', t)::regclass and a.attnum > 0 and not a.attisdropped
                   and a.attnotnull and a.attname !~ '^_' and not a.attname = any(required) loop
            execute format('alter table core.%I alter column %I drop not null', t, c.attname);
        end loop;
        if t = 'sales' then
            execute 'alter table core.sales alter column quantity type numeric';
        end if;
        if t in ('payments', 'operating_costs') then
            -- a row's content hash covers the table's columns in order, currency now last: a row loaded before
            -- hashes as a source that maps no currency hashes it (null), so reloading it changes nothing
            hashed := case t when 'payments' then 'payment_id, payment_date, client_id, invoice_ref, method'
                             else 'cost_id, cost_date, category, vendor' end || ', trim_scale(amount), null';
            execute format('alter table core.%I disable trigger user', t);
            execute format('update core.%I set _row_hash = md5(row(%s)::text)', t, hashed);
            execute format('alter table core.%I enable trigger user', t);
            execute format('update core.%I set _row_hash = md5(row(%s)::text)', t || '_history', hashed);
        end if;

        -- the history keeps each replaced version in the table's own column order, then when it was replaced
        execute format('alter table core.%I rename to %I', t || '_history', t || '_history_old');
        execute format('create table core.%I (like core.%I, _replaced_at timestamptz not null)', t || '_history', t);
        select string_agg(quote_ident(a.attname), ', ' order by a.attnum) into cols from pg_attribute a
         where a.attrelid = format('core.%I', t || '_history_old')::regclass and a.attnum > 0
           and not a.attisdropped;
        execute format('insert into core.%1$I (%2$s, _key) select %2$s, concat_ws(chr(31), %3$s) from core.%4$I',
                       t || '_history', cols, key_text, t || '_history_old');
        execute format('drop table core.%I', t || '_history_old');
        execute format('create index %I on core.%I (_key)', t || '_history_by_key', t || '_history');

        -- every row with its full lineage, and whether a later snapshot deleted it at source
        execute format(
            'create view core.%I as select c.*, b.source as _source,'
            ' b.source_ref || coalesce(''#'' || c._sheet, '''') as _source_ref, b.object_key as _object_key,'
            ' b.object_version as _object_version, b.window_from as _window_from, b.window_to as _window_to,'
            ' b.finished_at as _committed_at from core.%I c join meta.batches b on b.batch_id = c._batch_id',
            t || '_lineage', t);
    end loop;
end $$;

-- a snapshot's deletions and the money they took out are counted with the batch's other rows
alter table meta.batches add column rows_deleted bigint not null default 0,
                         add column amount_deleted numeric;
