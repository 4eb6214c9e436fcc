-- The canonical model. Every row carries its lineage: which batch, source, object and row it came
-- from, the hash of its content, and when it was first loaded and last changed. Every update keeps
-- the previous version in <table>_history (written by a trigger, so no code path can forget it).

create function core.keep_history() returns trigger language plpgsql as $$
begin
    execute format('insert into core.%I select ($1).*, now()', tg_table_name || '_history') using old;
    return new;
end $$;

create table core.clients (
    client_id        text not null,
    name             text not null,
    segment          text,
    country          text,
    created_on       date,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (client_id)
);
create index clients_by_batch on core.clients (_batch_id);
create table core.clients_history (like core.clients, _replaced_at timestamptz not null);
create index clients_history_by_key on core.clients_history (client_id);
create trigger clients_keep_history before update on core.clients
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();

create table core.sales (
    order_id         text not null,
    line_no          bigint not null,
    order_date       date not null,
    client_id        text not null,
    product          text,
    quantity         bigint not null,
    unit_price       numeric not null,
    amount           numeric not null,
    currency         text,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (order_id, line_no)
);
create index sales_by_batch on core.sales (_batch_id);
create table core.sales_history (like core.sales, _replaced_at timestamptz not null);
create index sales_history_by_key on core.sales_history (order_id, line_no);
create trigger sales_keep_history before update on core.sales
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();

create table core.payments (
    payment_id       text not null,
    payment_date     date not null,
    client_id        text not null,
    invoice_ref      text,
    method           text,
    amount           numeric not null,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (payment_id)
);
create index payments_by_batch on core.payments (_batch_id);
create table core.payments_history (like core.payments, _replaced_at timestamptz not null);
create index payments_history_by_key on core.payments_history (payment_id);
create trigger payments_keep_history before update on core.payments
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();

create table core.operating_costs (
    cost_id          text not null,
    cost_date        date not null,
    category         text not null,
    vendor           text,
    amount           numeric not null,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (cost_id)
);
create index operating_costs_by_batch on core.operating_costs (_batch_id);
create table core.operating_costs_history (like core.operating_costs, _replaced_at timestamptz not null);
create index operating_costs_history_by_key on core.operating_costs_history (cost_id);
create trigger operating_costs_keep_history before update on core.operating_costs
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();

create table core.tax (
    period           date not null,
    tax_type         text not null,
    amount           numeric not null,
    due_date         date,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (period, tax_type)
);
create index tax_by_batch on core.tax (_batch_id);
create table core.tax_history (like core.tax, _replaced_at timestamptz not null);
create index tax_history_by_key on core.tax_history (period, tax_type);
create trigger tax_keep_history before update on core.tax
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();

create table core.interactions (
    interaction_id   text not null,
    occurred_at      timestamptz not null,
    client_id        text not null,
    channel          text,
    outcome          text,
    _batch_id        bigint      not null references meta.batches (batch_id),
    _source          text        not null,
    _source_ref      text        not null,
    _source_row      bigint,
    _row_hash        text        not null,
    _loaded_at       timestamptz not null default now(),
    _updated_at      timestamptz not null default now(),
    primary key (interaction_id)
);
create index interactions_by_batch on core.interactions (_batch_id);
create table core.interactions_history (like core.interactions, _replaced_at timestamptz not null);
create index interactions_history_by_key on core.interactions_history (interaction_id);
create trigger interactions_keep_history before update on core.interactions
    for each row when (old._row_hash is distinct from new._row_hash) execute function core.keep_history();
