-- A first load into an empty core table writes its rows first and builds the primary key once, from the
-- sorted keys, instead of inserting a million keys one by one into a growing index: PostgreSQL's own
-- advice for populating a table. For a 1M-row sales export that halves the cost of the key.
--
-- Only the owner may drop and add a constraint, so two functions do it with the owner's rights, under
-- rules the loader cannot bend:
--   * only a table in core with a primary key, which is empty and which this transaction now holds in
--     ACCESS EXCLUSIVE mode (so no one reads or writes it until the load commits or rolls back);
--   * the key put back is exactly the one taken off, read from meta.deferred_keys, which the ingest role
--     can neither read nor write;
--   * a deferred trigger refuses to commit a transaction that took a key off and did not put it back.
-- A duplicate key in the batch makes the key build fail with a unique violation, as the insert would have.

create table meta.deferred_keys (
    target      regclass primary key,
    name        text not null,
    definition  text not null,
    txid        xid8 not null default pg_current_xact_id()
);
revoke all on meta.deferred_keys from pipeline_ingest, pipeline_reporting, public;

create function core.defer_primary_key(target regclass) returns boolean
language plpgsql security definer set search_path = pg_catalog as $$
declare
    key_name text;
    key_definition text;
    has_rows boolean;
begin
    if (select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = target)
            is distinct from 'core' then
        raise exception 'defer_primary_key: % is not a core table', target;
    end if;
    select conname, pg_get_constraintdef(oid) into key_name, key_definition
    from pg_constraint where conrelid = target and contype = 'p';
    if key_name is null then
        return false;
    end if;
    execute format('lock table %s in access exclusive mode', target);
    execute format('select exists (select from %s)', target) into has_rows;
    if has_rows then
        return false;
    end if;
    insert into meta.deferred_keys (target, name, definition) values (target, key_name, key_definition);
    execute format('alter table %s drop constraint %I', target, key_name);
    return true;
end $$;

create function core.restore_primary_key(target regclass) returns void
language plpgsql security definer set search_path = pg_catalog as $$
declare
    key_name text;
    key_definition text;
begin
    delete from meta.deferred_keys d where d.target = restore_primary_key.target
        and d.txid = pg_current_xact_id()
    returning d.name, d.definition into key_name, key_definition;
    if key_name is null then
        raise exception 'restore_primary_key: this transaction took no primary key off %', target;
    end if;
    execute format('alter table %s add constraint %I %s', target, key_name, key_definition);
end $$;

create function meta.deferred_key_restored() returns trigger
language plpgsql security definer set search_path = pg_catalog as $$
begin
    if exists (select from meta.deferred_keys where target = new.target) then
        raise exception 'the primary key of % was taken off for a load and not put back: rolled back', new.target;
    end if;
    return null;
end $$;

create constraint trigger deferred_key_restored after insert on meta.deferred_keys
    deferrable initially deferred for each row execute function meta.deferred_key_restored();

revoke all on function core.defer_primary_key(regclass), core.restore_primary_key(regclass),
    meta.deferred_key_restored() from public;
grant execute on function core.defer_primary_key(regclass), core.restore_primary_key(regclass)
    to pipeline_ingest;
revoke all on function meta.deferred_key_restored() from pipeline_ingest;
