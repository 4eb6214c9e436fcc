-- Helpers the loader's set-wise validation uses. They never raise: a value either normalises to the
-- canonical text of its type or is reported, row by row, with a reason a person can read.

-- '£1.234,50' with decimal ',' and thousands '.' -> '1234.50'; '(12.00)' and '12.00-' -> '-12.00'.
create function meta.money_text(v text, decimal_sep text, thousands_sep text) returns text
language sql immutable parallel safe as $$
    select case
        when s ~ '^\(.*\)$' then '-' || substr(s, 2, length(s) - 2)
        when s ~ '^[^-].*-$' then '-' || left(s, -1)
        else s
    end
    from (select replace(replace(regexp_replace(btrim(v), '[£$€¥\s]', '', 'g'), coalesce(thousands_sep, ''), ''),
                         decimal_sep, '.') as s) t
$$;

-- Strict date text: only what the source's layout says, then ISO; nothing left to DateStyle guessing.
create function meta.is_iso_date(v text) returns boolean
language sql immutable parallel safe as $$
    select v ~ '^\d{4}-\d{1,2}-\d{1,2}$' and pg_input_is_valid(v, 'date')
$$;

create function meta.is_timestamp(v text) returns boolean
language sql stable parallel safe as $$
    select v ~ '^\d{4}-\d{1,2}-\d{1,2}([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?$'
       and pg_input_is_valid(v, 'timestamptz')
$$;
