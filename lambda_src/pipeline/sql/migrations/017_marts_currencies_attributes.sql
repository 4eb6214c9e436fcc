-- The marts for real data: currencies are never added together, rows a snapshot deleted at source are left
-- out, and sales can be filtered and grouped by their attributes.
--
--   A row's currency is its own, or the company's (meta.company) for a row loaded before rows had one. Tax is
--   always in the company's currency; interactions carry no money.
--   A row with _deleted_by set is kept in core (with its lineage) but is in no mart.
--   A sale's attributes (channel...) and its client's (region, segment code...) are part of client_day_sales'
--   grain, the sale's own winning a name both have; '{}' when there are none.
--
-- Grains: company_daily and daily_activity (day, currency): every day of the span has a row for the company's
-- currency and one for each other currency the data holds, zeros on a quiet day; interactions are counted on
-- the company currency's rows only. yearly_sales (year, currency), client_day_sales (day, client_id, currency,
-- attributes), daily_costs_by_category (day, category, currency). marts.top_clients ranks one currency's sales
-- (the company's unless asked) over the rows whose attributes contain the filters.

drop function marts.top_clients(date, date, int);
drop materialized view marts.yearly_sales;
drop materialized view marts.daily_activity;
drop materialized view marts.company_daily;
drop materialized view marts.client_day_sales;
drop materialized view marts.daily_costs_by_category;

-- The company-wide wide table, per day and currency. Tax belongs to its period (the first of the month) and to
-- the company's currency; an interaction's day is its timestamp's date in the company's zone (meta.company),
-- whatever zone the refreshing session has (a BI tool's, a laptop's in another country), and it is counted
-- on the company currency's row.
create materialized view marts.company_daily as
with company as (
    select (select currency from meta.company) as currency, (select timezone from meta.company) as timezone
), sales as (
    select s.order_date as day, coalesce(s.currency, k.currency) as currency, sum(s.amount) as sales_amount,
           count(distinct s.order_id) as orders, count(*) as order_lines,
           count(distinct s.client_id) as active_clients
    from core.sales s cross join company k
    where s._deleted_by is null
    group by 1, 2
), costs as (
    select c.cost_date as day, coalesce(c.currency, k.currency) as currency, sum(c.amount) as operating_costs
    from core.operating_costs c cross join company k
    where c._deleted_by is null
    group by 1, 2
), payments as (
    select p.payment_date as day, coalesce(p.currency, k.currency) as currency, sum(p.amount) as payments_received
    from core.payments p cross join company k
    where p._deleted_by is null
    group by 1, 2
), tax as (
    select date_trunc('month', t.period)::date as day, k.currency, sum(t.amount) as tax
    from core.tax t cross join company k
    where t._deleted_by is null
    group by 1, 2
), interactions as (
    select (i.occurred_at at time zone k.timezone)::date as day, k.currency, count(*) as interactions
    from core.interactions i cross join company k
    where i._deleted_by is null
    group by 1, 2
), facts as (
    select day, currency from sales union all select day, currency from costs
    union all select day, currency from payments union all select day, currency from tax
    union all select day, currency from interactions
), span as (
    select min(day) as first_day, max(day) as last_day from facts
), currencies as (
    select currency from company union select currency from facts
)
select d.day::date                                    as day,
       cur.currency                                   as currency,
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
cross join currencies cur
left join sales s on s.day = d.day::date and s.currency is not distinct from cur.currency
left join costs c on c.day = d.day::date and c.currency is not distinct from cur.currency
left join payments p on p.day = d.day::date and p.currency is not distinct from cur.currency
left join tax t on t.day = d.day::date and t.currency is not distinct from cur.currency
left join interactions i on i.day = d.day::date and i.currency is not distinct from cur.currency
with data;
create unique index company_daily_day_currency on marts.company_daily (day, currency);

-- Daily business activity: the headline columns of the wide table, per day and currency.
create materialized view marts.daily_activity as
select day, currency, sales_amount, orders, active_clients, operating_costs, payments_received, tax
from marts.company_daily
with data;
create unique index daily_activity_day_currency on marts.daily_activity (day, currency);

-- Yearly sales per currency, growth like for like (as 010 made it): a year is compared with the same dates one
-- year earlier in the same currency, and has no growth figure when the data does not reach back that far.
-- Every year of the span has a row for every currency of company_daily. 29 February is compared with 28 February.
create materialized view marts.yearly_sales as
with company as (
    select (select currency from meta.company) as currency
), span as (
    select min(day) as first_day, max(day) as last_day from marts.company_daily
), years as (
    select extract(year from day)::int as year, currency, sum(sales_amount) as sales_amount,
           min(day) as first_day, max(day) as last_day
    from marts.company_daily group by 1, 2
), orders as (
    select extract(year from s.order_date)::int as year, coalesce(s.currency, k.currency) as currency,
           count(distinct s.order_id) as orders
    from core.sales s cross join company k
    where s._deleted_by is null
    group by 1, 2
), compared as (
    select y.year, y.currency, (
               select sum(d.sales_amount) from marts.company_daily d
               where d.currency is not distinct from y.currency
                 and d.day between (y.first_day - interval '1 year')::date and (y.last_day - interval '1 year')::date
           ) as amount
    from years y cross join span s
    where (y.first_day - interval '1 year')::date >= s.first_day
)
select y.year,
       y.currency,
       y.sales_amount::numeric                                                  as sales_amount,
       coalesce(o.orders, 0)::bigint                                            as orders,
       y.first_day,
       y.last_day,
       (y.first_day, y.last_day) <> (make_date(y.year, 1, 1), make_date(y.year, 12, 31)) as partial_year,
       c.amount::numeric                                                        as compared_amount,
       (y.sales_amount - c.amount)::numeric                                     as growth_abs,
       round(100 * (y.sales_amount - c.amount) / nullif(abs(c.amount), 0), 2)::numeric as growth_pct
from years y
left join orders o on o.year = y.year and o.currency is not distinct from y.currency
left join compared c on c.year = y.year and c.currency is not distinct from y.currency
with data;
create unique index yearly_sales_year_currency on marts.yearly_sales (year, currency);

-- Client-day sales per currency and attribute set (the client's and the sale's own): the grain every "top
-- clients over a period" question is answered from, filtered by attributes with
-- `attributes @> '{"region": "North"}'`.
create materialized view marts.client_day_sales as
select s.order_date as day, s.client_id::text as client_id, c.name::text as client_name,
       coalesce(s.currency, (select currency from meta.company))::text as currency,
       coalesce(c.attributes, '{}'::jsonb) || coalesce(s.attributes, '{}'::jsonb) as attributes,
       sum(s.amount)::numeric as sales_amount, count(distinct s.order_id)::bigint as orders,
       count(*)::bigint as order_lines
from core.sales s
left join (select distinct on (client_id) client_id, name, attributes from core.clients where _deleted_by is null
           order by client_id, name desc nulls last, _key) c
       on c.client_id = s.client_id
where s._deleted_by is null
group by 1, 2, 3, 4, 5
with data;
create unique index client_day_sales_day_client_currency_attributes
    on marts.client_day_sales (day, client_id, currency, attributes);

-- Daily operating costs by category and currency (only the days and categories that have costs).
create materialized view marts.daily_costs_by_category as
select cost_date as day, category, coalesce(currency, (select currency from meta.company))::text as currency,
       sum(amount)::numeric as amount, count(*)::bigint as entries
from core.operating_costs
where _deleted_by is null
group by 1, 2, 3
with data;
create unique index daily_costs_by_category_day_category_currency
    on marts.daily_costs_by_category (day, category, currency);

-- The attribute values sales carry, for a BI tool's or the dashboard's pick-lists (the reporting role reads
-- the marts only): one row per attribute and value, with the number of sales lines carrying it. `value` is
-- the JSON value, so jsonb_build_object(attribute, value) is the filter that selects exactly those rows.
create view marts.sales_attributes as
select a.key::text as attribute, a.value as value, a.value #>> '{}' as value_text,
       sum(d.order_lines)::bigint as rows
from marts.client_day_sales d
cross join lateral jsonb_each(d.attributes) a
group by 1, 2
order by 1, 3;

-- Top clients of a period [p_from, p_to] (both inclusive) in one currency (p_currency; null: the company's),
-- over the sales whose attributes contain p_filters ('{}': all), with each one's share of those sales in the
-- period and its amount in the previous period of the same length (same currency, same filters). One range scan
-- of client_day_sales. Orders are summed per day and attribute set: an order whose lines carry different dates
-- or attributes counts once per date and attribute set.
create function marts.top_clients(p_from date, p_to date, p_n int default 10, p_currency text default null,
                                  p_filters jsonb default '{}')
returns table (rank int, client_id text, client_name text, sales_amount numeric, share_pct numeric,
               orders bigint, previous_amount numeric, change_pct numeric, currency text)
language sql stable as $$
    with asked as (
        select coalesce(upper(p_currency), (select c.currency from marts.company c)) as currency,
               coalesce(p_filters, '{}'::jsonb) as filters
    ), per_client as (
        select d.client_id,
               max(d.client_name) as client_name,
               sum(d.sales_amount) filter (where d.day >= p_from) as sales_amount,
               sum(d.orders) filter (where d.day >= p_from)::bigint as orders,
               coalesce(sum(d.sales_amount) filter (where d.day < p_from), 0) as previous_amount
        from marts.client_day_sales d, asked a
        where d.day between p_from - (p_to - p_from + 1) and p_to
          and d.currency = a.currency
          and d.attributes @> a.filters
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
           round(100 * (r.sales_amount - r.previous_amount) / nullif(abs(r.previous_amount), 0), 2),
           (select a.currency from asked a)
    from ranked r
    where r.position <= p_n
    order by r.position
$$;

-- What the reporting role (and the monitor) had on what was recreated: SELECT on the marts (the default
-- privileges grant it too when the owner runs this), EXECUTE on top_clients, nothing for PUBLIC.
revoke all on function marts.top_clients(date, date, int, text, jsonb) from public;
grant execute on function marts.top_clients(date, date, int, text, jsonb) to pipeline_reporting;
grant select on marts.company_daily, marts.daily_activity, marts.yearly_sales, marts.client_day_sales,
                marts.daily_costs_by_category, marts.sales_attributes to pipeline_reporting, pipeline_monitor;
