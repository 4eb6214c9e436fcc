-- The company the warehouse belongs to, as its configuration says (name, time zone, currency): one row,
-- written by the migrate step on every run (pipeline.migrations.set_company). The marts read the company's
-- currency from it (a row loaded before rows had a currency is in the company's), and BI tools read it
-- through marts.company, since the reporting role sees the marts only.
create table meta.company (
    one        boolean primary key default true check (one),
    name       text        not null,
    timezone   text        not null,
    currency   text        not null check (currency ~ '^[A-Z]{3}$'),
    updated_at timestamptz not null default now()
);

create view marts.company as select name, timezone, currency from meta.company;
