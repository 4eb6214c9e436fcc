-- Sales lines far from their neighbours, in one place for the two that report them: `playbook validate` (as
-- the owner) and the operations email (as pipeline_reporting, which reads no core table, so the function runs
-- as its owner and returns only the lines it finds). Per product and per client and product, the median
-- quantity and the median absolute deviation (MAD); a line is an outlier when it is more than p_robust_z
-- robust deviations (1.4826 x MAD) from its group's median and at least p_ratio times the median (or at most
-- its reciprocal). Groups of fewer than p_min_rows lines are not judged. p_loaded_since keeps the lines of
-- batches committed since then (null: every line); the statistics always use every live line.
-- The function refuses limits looser than 3 robust deviations, twice the median and groups of 8 lines (the
-- configuration refuses them too): what it hands the reporting role is the few lines that stand out, never a
-- way to list core.sales.
create function marts.sales_outliers(p_robust_z numeric, p_ratio numeric, p_min_rows int,
                                     p_loaded_since timestamptz default null)
returns table (grouped_by text, order_id text, line_no bigint, client_id text, product text, quantity numeric,
               median double precision, mad double precision, rows_in_group bigint, batch_id bigint,
               source_ref text, sheet text, source_row bigint, loaded_at timestamptz)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    if p_robust_z is null or p_robust_z < 3 or p_ratio is null or p_ratio < 2 or p_min_rows is null
       or p_min_rows < 8 then
        raise exception 'marts.sales_outliers: limits looser than robust_z 3, ratio 2, min_rows 8 are refused'
            using errcode = 'invalid_parameter_value';
    end if;
    return query
    -- each line twice, once per grouping, under a group key that equality (and so a hash join) can compare: a
    -- row's text form tells a missing product or client from an empty one
    with keyed as (
        select g.grouped_by, row(g.grouped_by, case when g.grouped_by = 'product' then null else s.client_id end,
                                 s.product)::text as group_key,
               s.order_id, s.line_no, s.client_id, s.product, s.quantity::numeric as quantity, s._batch_id,
               s._sheet, s._source_row
          from core.sales s cross join (values ('product'), ('client and product')) as g (grouped_by)
         where s._deleted_by is null and s.quantity is not null),
    centre as (
        select group_key, count(*) as n, percentile_cont(0.5) within group (order by quantity) as med
          from keyed group by group_key),
    spread as (
        select k.group_key, percentile_cont(0.5) within group (order by abs(k.quantity - c.med)) as mad
          from keyed k join centre c using (group_key)
         where c.n >= p_min_rows
         group by k.group_key)
    select k.grouped_by, k.order_id, k.line_no, k.client_id, k.product, k.quantity, c.med, s.mad, c.n, k._batch_id,
           b.source_ref, k._sheet, k._source_row, b.finished_at
      from keyed k
      join centre c using (group_key)
      join spread s using (group_key)
      join meta.batches b on b.batch_id = k._batch_id
     where c.med <> 0
       and abs(k.quantity - c.med) > p_robust_z * 1.4826 * s.mad
       and (abs(k.quantity) >= p_ratio * abs(c.med) or abs(k.quantity) * p_ratio <= abs(c.med))
       and (p_loaded_since is null or b.finished_at >= p_loaded_since)
     order by k.grouped_by desc, k._batch_id, k._source_row, k.order_id, k.line_no;
end
$$;
revoke all on function marts.sales_outliers(numeric, numeric, int, timestamptz) from public;
grant execute on function marts.sales_outliers(numeric, numeric, int, timestamptz) to pipeline_reporting,
    pipeline_monitor;  -- the monitor reads core already: it validates on AWS
