-- marts.refresh within the session's time: the functions' sessions carry lock and statement timeouts sized to
-- the time they have left (pipeline.db.session_timeouts). A refresh that waits past lock_timeout (for another
-- refresh, or behind a lock a session holds on a mart or a table it reads), or whose time runs out
-- (statement_timeout), records why in meta.mart_refreshes, for that mart and for every mart it leaves
-- unrefreshed, before it raises: a stopped refresh is never left 'running' or unexplained.
create or replace procedure marts.refresh(inout run_id bigint default null)
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
    v_stopped    text;
    v_locked     boolean := false;
begin
    if run_id is null then
        run_id := nextval('meta.mart_refresh_runs');
    end if;
    begin
        perform pg_advisory_lock(7341003);
        v_locked := true;
    exception when lock_not_available then
        v_stopped := format('not refreshed: another refresh of the marts held them longer than lock_timeout (%s)',
                            current_setting('lock_timeout'));
    end;
    for m in select o.mart, o.depends_on from marts.refresh_order() o loop
        v_pos := v_pos + 1;
        if v_stopped is not null or m.depends_on && v_bad then
            insert into meta.mart_refreshes (run_id, mart, position, finished_at, status, error)
            values (run_id, m.mart, v_pos, clock_timestamp(), 'skipped', coalesce(v_stopped,
                    'not refreshed: it reads ' || array_to_string(
                        array(select unnest(m.depends_on) intersect select unnest(v_bad)), ', ')
                    || ', which failed'));
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
        exception
            when lock_not_available then
                v_error := format('%s: waited longer than lock_timeout (%s) for a lock another session holds',
                                  sqlerrm, current_setting('lock_timeout'));
            when query_canceled then
                if sqlerrm like '%statement timeout%' then
                    v_error := format('%s (statement_timeout %s: the time the function had left ran out)',
                                      sqlerrm, current_setting('statement_timeout'));
                    v_stopped := 'not refreshed: the refresh ran out of time at marts.' || m.mart;
                else
                    v_error := sqlerrm;
                    v_stopped := 'not refreshed: the refresh was cancelled at marts.' || m.mart;
                end if;
            when others then
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
    if v_locked then
        perform pg_advisory_unlock(7341003);
    end if;
    if v_stopped is not null and cardinality(v_messages) = 0 then
        v_messages := array[v_stopped];
    end if;
    if cardinality(v_messages) > 0 then
        raise exception 'marts.refresh run %: % failed', run_id, array_to_string(v_bad, ', ')
            using detail = array_to_string(v_messages, E'\n'),
                  hint = 'the failed marts keep their previous snapshot; see meta.mart_refreshes';
    end if;
end $$;
