-- Yearly growth compares like with like. The first and last years of the data are usually partial (the
-- months since the first export, the year to date), and a part of a year against a whole one is no
-- growth figure. A year is compared with the same dates one year earlier; when the data does not reach
-- back that far, it has no growth figure at all. A BI tool reading this mart then tells the same story as
-- the yearly chart.
--
--   first_day, last_day  the days of the year the data covers
--   partial_year         the data does not cover the whole calendar year
--   compared_amount      sales on the same dates a year earlier (null: not covered by the data)
--   growth_abs           sales_amount - compared_amount
--   growth_pct           growth on compared_amount, in percent (null also when compared_amount is 0)
-- 29 February is compared with 28 February.

drop materialized view marts.yearly_sales;

create materialized view marts.yearly_sales as
with span as (
    select min(day) as first_day, max(day) as last_day from marts.company_daily
), years as (
    select extract(year from day)::int as year, sum(sales_amount) as sales_amount,
           min(day) as first_day, max(day) as last_day
    from marts.company_daily group by 1
), orders as (
    select extract(year from order_date)::int as year, count(distinct order_id) as orders
    from core.sales group by 1
), compared as (
    select y.year, (
               select sum(d.sales_amount) from marts.company_daily d
               where d.day between (y.first_day - interval '1 year')::date and (y.last_day - interval '1 year')::date
           ) as amount
    from years y cross join span s
    where (y.first_day - interval '1 year')::date >= s.first_day
)
select y.year,
       y.sales_amount::numeric                                                  as sales_amount,
       coalesce(o.orders, 0)::bigint                                            as orders,
       y.first_day,
       y.last_day,
       (y.first_day, y.last_day) <> (make_date(y.year, 1, 1), make_date(y.year, 12, 31)) as partial_year,
       c.amount::numeric                                                        as compared_amount,
       (y.sales_amount - c.amount)::numeric                                     as growth_abs,
       round(100 * (y.sales_amount - c.amount) / nullif(abs(c.amount), 0), 2)::numeric as growth_pct
from years y
left join orders o using (year)
left join compared c using (year)
with data;
create unique index yearly_sales_year on marts.yearly_sales (year);
