-- The marts: materialized views over core, each with a unique index so it can be refreshed CONCURRENTLY
-- (readers keep the previous snapshot while the new one is computed). Money is numeric end to end.
-- They are created WITH DATA so even an empty warehouse has populated marts: a view that was never
-- populated cannot be refreshed concurrently.

-- The company-wide wide table: one row per calendar day from the first to the last day any core table
-- has data for; a quiet day is a row of zeros. Tax belongs to its period (the first of the month).
-- An interaction's day is its timestamp's date in the database's TimeZone setting.
create materialized view marts.company_daily as
with sales as (
    select order_date as day, sum(amount) as sales_amount, count(distinct order_id) as orders,
           count(*) as order_lines, count(distinct client_id) as active_clients
    from core.sales group by order_date
), costs as (
    select cost_date as day, sum(amount) as operating_costs from core.operating_costs group by cost_date
), payments as (
    select payment_date as day, sum(amount) as payments_received from core.payments group by payment_date
), tax as (
    select date_trunc('month', period)::date as day, sum(amount) as tax from core.tax group by 1
), interactions as (
    select occurred_at::date as day, count(*) as interactions from core.interactions group by 1
), span as (
    select min(day) as first_day, max(day) as last_day
    from (select day from sales union all select day from costs union all select day from payments
          union all select day from tax union all select day from interactions) d
)
select d.day::date                                    as day,
       coalesce(s.sales_amount, 0)::numeric           as sales_amount,
       coalesce(s.orders, 0)::bigint                  as orders,
       coalesce(s.order_lines, 0)::bigint             as order_lines,
       coalesce(s.active_clients, 0)::bigint          as active_clients,
       coalesce(c.operating_costs, 0)::numeric        as operating_costs,
       coalesce(p.payments_received, 0)::numeric      as payments_received,
       coalesce(t.tax, 0)::numeric                    as tax,
       coalesce(i.interactions, 0)::bigint            as interactions,
       (coalesce(p.payments_received, 0) - coalesce(c.operating_costs, 0) - coalesce(t.tax, 0))::numeric
                                                      as net_cash
from span
cross join lateral generate_series(span.first_day, span.last_day, interval '1 day') as d(day)
left join sales s on s.day = d.day::date
left join costs c on c.day = d.day::date
left join payments p on p.day = d.day::date
left join tax t on t.day = d.day::date
left join interactions i on i.day = d.day::date
with data;
create unique index company_daily_day on marts.company_daily (day);

-- Daily business activity: the headline columns of the wide table.
create materialized view marts.daily_activity as
select day, sales_amount, orders, active_clients, operating_costs, payments_received, tax
from marts.company_daily
with data;
create unique index daily_activity_day on marts.daily_activity (day);

-- Yearly sales with growth. Every year of the span has a row; orders are distinct orders of the year.
-- Growth in percent is relative to the size of the previous year (abs), so its sign is the growth's sign.
create materialized view marts.yearly_sales as
with years as (
    select extract(year from day)::int as year, sum(sales_amount) as sales_amount
    from marts.company_daily group by 1
), orders as (
    select extract(year from order_date)::int as year, count(distinct order_id) as orders
    from core.sales group by 1
), with_previous as (
    select y.year, y.sales_amount, coalesce(o.orders, 0)::bigint as orders,
           lag(y.sales_amount) over (order by y.year) as previous
    from years y left join orders o using (year)
)
select year, sales_amount::numeric as sales_amount, orders,
       (sales_amount - previous)::numeric as growth_abs,
       round(100 * (sales_amount - previous) / nullif(abs(previous), 0), 2)::numeric as growth_pct
from with_previous
with data;
create unique index yearly_sales_year on marts.yearly_sales (year);

-- Client-day sales: the grain every "top clients over a period" question is answered from.
create materialized view marts.client_day_sales as
select s.client_id::text as client_id, c.name::text as client_name, s.order_date as day,
       sum(s.amount)::numeric as sales_amount, count(distinct s.order_id)::bigint as orders,
       count(*)::bigint as order_lines
from core.sales s
left join core.clients c on c.client_id = s.client_id
group by s.order_date, s.client_id, c.name
with data;
create unique index client_day_sales_day_client on marts.client_day_sales (day, client_id);

-- Daily operating costs by category (only the days and categories that have costs).
create materialized view marts.daily_costs_by_category as
select cost_date as day, category, sum(amount)::numeric as amount, count(*)::bigint as entries
from core.operating_costs
group by cost_date, category
with data;
create unique index daily_costs_by_category_day_category on marts.daily_costs_by_category (day, category);

-- Top clients of a period [p_from, p_to] (both inclusive), with each one's share of all sales in the
-- period and its amount in the previous period of the same length. One range scan of client_day_sales.
-- Orders are summed per day: an order whose lines carry different dates counts once per date.
create function marts.top_clients(p_from date, p_to date, p_n int default 10)
returns table (rank int, client_id text, client_name text, sales_amount numeric, share_pct numeric,
               orders bigint, previous_amount numeric, change_pct numeric)
language sql stable as $$
    with per_client as (
        select d.client_id,
               max(d.client_name) as client_name,
               sum(d.sales_amount) filter (where d.day >= p_from) as sales_amount,
               sum(d.orders) filter (where d.day >= p_from)::bigint as orders,
               coalesce(sum(d.sales_amount) filter (where d.day < p_from), 0) as previous_amount
        from marts.client_day_sales d
        where d.day between p_from - (p_to - p_from + 1) and p_to
        group by d.client_id
    ), ranked as (
        select pc.*,
               sum(pc.sales_amount) over () as period_total,
               row_number() over (order by pc.sales_amount desc, pc.client_id) as position
        from per_client pc
        where pc.sales_amount is not null
    )
    select r.position::int, r.client_id, r.client_name, r.sales_amount,
           round(100 * r.sales_amount / nullif(r.period_total, 0), 2),
           r.orders, r.previous_amount,
           round(100 * (r.sales_amount - r.previous_amount) / nullif(abs(r.previous_amount), 0), 2)
    from ranked r
    where r.position <= p_n
    order by r.position
$$;

-- Data freshness per source: its last committed batch, so reports can say how current they are
-- without the reporting role reading meta (the view reads it with its owner's rights).
create view marts.data_freshness as
select distinct on (source)
       source,
       batch_id                                   as last_batch_id,
       coalesce(finished_at, started_at)          as last_loaded_at,
       rows_inserted + rows_updated               as rows_loaded
from meta.batches
where status = 'committed'
order by source, coalesce(finished_at, started_at) desc, batch_id desc;

-- Every refresh of every mart: one row per mart per run, written as it happens (committed before and
-- after each refresh, so a failure is on record even though the call raises).
create sequence meta.mart_refresh_runs;
create table meta.mart_refreshes (
    refresh_id    bigint generated always as identity primary key,
    run_id        bigint      not null,
    mart          text        not null,
    position      int         not null,
    concurrent    boolean,
    started_at    timestamptz not null default clock_timestamp(),
    finished_at   timestamptz,
    rows          bigint,
    status        text        not null check (status in ('running', 'ok', 'failed', 'skipped')),
    error         text
);
create index mart_refreshes_by_run on meta.mart_refreshes (run_id);
create index mart_refreshes_by_mart on meta.mart_refreshes (mart, started_at);

-- The marts in refresh order: a mart comes after every mart its query reads (read from the catalog, so
-- a mart added later takes its place without editing this list).
create function marts.refresh_order()
returns table (mart text, depends_on text[], height int)
language sql stable as $$
    with recursive views as (
        select c.oid, c.relname::text as name
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'marts' and c.relkind = 'm'
    ), edges as (
        select distinct v.oid as view_oid, dep.oid as dep_oid
        from views v
        join pg_catalog.pg_rewrite r on r.ev_class = v.oid
        join pg_catalog.pg_depend d on d.classid = 'pg_catalog.pg_rewrite'::regclass and d.objid = r.oid
             and d.refclassid = 'pg_catalog.pg_class'::regclass
        join views dep on dep.oid = d.refobjid and dep.oid <> v.oid
    ), walk (view_oid, at_oid, depth) as (
        select oid, oid, 0 from views
        union all
        select w.view_oid, e.dep_oid, w.depth + 1 from walk w join edges e on e.view_oid = w.at_oid
        where w.depth < 64
    )
    select v.name,
           coalesce((select array_agg(d.name order by d.name) from edges e join views d on d.oid = e.dep_oid
                     where e.view_oid = v.oid), '{}'),
           (select max(w.depth) from walk w where w.view_oid = v.oid)::int
    from views v
    order by 3, 1
$$;

-- Refresh one mart with its owner's rights (REFRESH needs ownership; the caller needs only EXECUTE):
-- CONCURRENTLY when it is populated and has a unique index, else plainly. Returns its row count.
create function marts.refresh_one(p_mart text, out rows bigint, out concurrent boolean)
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    v_oid oid;
begin
    select c.oid into v_oid
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'marts' and c.relname = p_mart and c.relkind = 'm';
    if v_oid is null then
        raise exception 'marts.%: no such materialized view', p_mart using errcode = 'undefined_table';
    end if;
    select c.relispopulated and exists (
               select 1 from pg_index i
               where i.indrelid = c.oid and i.indisunique and i.indisvalid and i.indpred is null
                 and i.indexprs is null)
      into concurrent
    from pg_class c where c.oid = v_oid;
    if concurrent then
        execute format('refresh materialized view concurrently marts.%I', p_mart);
    else
        execute format('refresh materialized view marts.%I', p_mart);
    end if;
    execute format('select count(*) from marts.%I', p_mart) into rows;
end $$;

-- CALL marts.refresh(): every mart, in dependency order, each in a transaction of its own, recorded in
-- meta.mart_refreshes. A failing mart keeps its previous snapshot, the marts built on it are skipped,
-- the others still refresh, and the call raises at the end naming what failed. Call it outside an
-- explicit transaction (autocommit), since it commits as it goes. One run at a time (advisory lock).
create procedure marts.refresh(inout run_id bigint default null)
language plpgsql as $$
declare
    m            record;
    v_id         bigint;
    v_rows       bigint;
    v_conc       boolean;
    v_error      text;
    v_bad        text[] := '{}';
    v_messages   text[] := '{}';
    v_pos        int := 0;
begin
    if run_id is null then
        run_id := nextval('meta.mart_refresh_runs');
    end if;
    perform pg_advisory_lock(7341003);
    for m in select o.mart, o.depends_on from marts.refresh_order() o loop
        v_pos := v_pos + 1;
        if m.depends_on && v_bad then
            insert into meta.mart_refreshes (run_id, mart, position, finished_at, status, error)
            values (run_id, m.mart, v_pos, clock_timestamp(), 'skipped',
                    'not refreshed: it reads ' || array_to_string(
                        array(select unnest(m.depends_on) intersect select unnest(v_bad)), ', ')
                    || ', which failed');
            v_bad := v_bad || m.mart;
            commit;
            continue;
        end if;
        insert into meta.mart_refreshes (run_id, mart, position, status)
        values (run_id, m.mart, v_pos, 'running')
        returning refresh_id into v_id;
        commit;
        v_error := null;
        v_rows := null;
        v_conc := null;
        begin
            select o.rows, o.concurrent into v_rows, v_conc from marts.refresh_one(m.mart) o;
        exception when others then
            v_error := sqlerrm;
        end;
        update meta.mart_refreshes
           set finished_at = clock_timestamp(), rows = v_rows, concurrent = v_conc,
               status = case when v_error is null then 'ok' else 'failed' end, error = v_error
         where refresh_id = v_id;
        commit;
        if v_error is not null then
            v_bad := v_bad || m.mart;
            v_messages := v_messages || format('marts.%s: %s', m.mart, v_error);
        end if;
    end loop;
    perform pg_advisory_unlock(7341003);
    if cardinality(v_messages) > 0 then
        raise exception 'marts.refresh run %: % failed', run_id, array_to_string(v_bad, ', ')
            using detail = array_to_string(v_messages, E'\n'),
                  hint = 'the failed marts keep their previous snapshot; see meta.mart_refreshes';
    end if;
end $$;
