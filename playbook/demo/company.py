"""Northwind Provisions Ltd, the demo SME: its clients and three years of business, drawn from one seed.

Every money column is integer pence (int64); nothing here adds floats. Each table is drawn from its own
child generator of the seed, so changing one table's rules never reshuffles another's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from functools import cached_property

import numpy as np
import pandas as pd

COMPANY = "Northwind Provisions Ltd"
TIMEZONE = "Europe/London"
DEFAULT_SEED = 7
DEFAULT_END = date(2026, 11, 30)

# product -> list price in pence in the first year; prices rise by INFLATION each year
PRODUCTS: dict[str, int] = {
    "Extra Virgin Olive Oil 5L": 3450, "Sunflower Oil 20L": 4290, "Basmati Rice 10kg": 1895,
    "Arborio Rice 5kg": 1240, "Penne 3kg": 645, "Spaghetti 3kg": 620, "Plain Flour 16kg": 1375,
    "Strong Bread Flour 16kg": 1590, "Caster Sugar 5kg": 540, "Sea Salt 2kg": 385,
    "Black Peppercorns 1kg": 1620, "Chopped Tomatoes 6x2.5kg": 1480, "Passata 12x500g": 1060,
    "Chickpeas 6x2.5kg": 1320, "Coconut Milk 12x400ml": 1560, "Vegetable Stock 2kg": 1190,
    "Cheddar Block 5kg": 3280, "Mozzarella 2kg": 1450, "Parmesan Wedge 1kg": 1990,
    "Unsalted Butter 10x250g": 2150, "Double Cream 2L": 760, "Whole Milk 12x1L": 1080,
    "Free Range Eggs 180": 3350, "Smoked Salmon 1kg": 3890, "Chicken Breast 5kg": 3150,
    "Beef Mince 5kg": 3690, "Back Bacon 2kg": 1760, "Frozen Peas 10kg": 1490, "Chips 4x2.5kg": 1290,
    "Ground Coffee 6x1kg": 7450, "Tea Bags 1100": 2180, "Orange Juice 12x1L": 1590,
    "Sparkling Water 24x500ml": 890, "Dark Chocolate 2.5kg": 2490, "Vanilla Extract 500ml": 2240,
    "Balsamic Vinegar 5L": 2190, "Dijon Mustard 2kg": 990, "Mayonnaise 10L": 2390,
    "Napkins 2000": 1850, "Compostable Cups 1000": 4100, "Cling Film 450m": 1320, "Foil 450m": 1560,
}
INFLATION = 0.035  # yearly list-price rise

SEGMENTS = ("Restaurant", "Cafe", "Hotel", "Retail", "Catering", "Public Sector", "Wholesale")
# trade accounts buy on credit: their orders are invoiced in the accounting system, which the playbook reads through
# its API (source `trade_invoices`); the other segments order through the web shop, whose order system exports CSV
INVOICED_SEGMENTS = ("Hotel", "Catering", "Public Sector", "Wholesale")
INVOICES_SOURCE = "trade_invoices"  # the API source's name in playbook.yaml
COUNTRIES = ("GB", "IE", "FR", "NL", "DE")
COUNTRY_P = (0.86, 0.07, 0.03, 0.02, 0.02)
_NAME_A = ("Harbour", "Riverside", "Oakwood", "Kestrel", "Millbrook", "Ashford", "Bramley", "Castle",
           "Dovecote", "Elmstead", "Fenwick", "Greystone", "Hawthorn", "Ivy", "Juniper", "Kingfisher",
           "Larkspur", "Meadow", "Northgate", "Orchard", "Penrose", "Quayside", "Rosewood", "Saltmarsh",
           "Thistle", "Upton", "Vale", "Willow", "Yew Tree", "O'Neill's", "Baker's", "St Anne's")
_NAME_B = ("Kitchen", "Bistro", "Deli", "Tavern", "Hotel", "Grocers", "Canteen", "Tea Rooms", "Bakery",
           "Brasserie", "Foods", "Inn", "Larder", "Pantry", "Dining", "Cafe", "Market", "Catering")
_NAME_C = ("Ltd", "Ltd", "Ltd", "LLP", "& Co", "Group", "", "", "Ltd.", "plc")

# day-of-week demand, Monday first: trade customers order on working days
WEEKDAY_FACTOR = np.array([1.18, 1.10, 1.08, 1.12, 1.22, 0.22, 0.08])
METHODS = ("BACS", "Faster Payment", "Card", "Cheque", "Direct Debit")
METHOD_P = (0.52, 0.25, 0.1, 0.05, 0.08)
BANKS = ("Barclays", "HSBC")
CHANNELS = ("Email", "Phone", "Meeting", "Chat", "Webinar")
CHANNEL_P = (0.42, 0.3, 0.12, 0.12, 0.04)
OUTCOMES = ("Follow-up", "Quote sent", "Order placed", "No answer", "Resolved", "Complaint")
OUTCOME_P = (0.3, 0.18, 0.2, 0.14, 0.14, 0.04)
RETURN_SHARE = 0.002  # of orders: goods sent back, credited on the order as a line of negative quantity
# where a client's deliveries go: British clients by area, the others by their market
GB_REGIONS = ("London", "South East", "South West", "Midlands", "North", "Scotland", "Wales")
GB_REGION_P = (0.24, 0.18, 0.1, 0.16, 0.18, 0.08, 0.06)
REGION_OF_COUNTRY = {"IE": "Ireland", "FR": "Europe", "NL": "Europe", "DE": "Europe"}
EURO_COUNTRIES = ("IE", "FR", "NL", "DE")  # clients who pay into the euro account, in euros
EURO_OPENING_CENTS = 1_850_000  # the euro account's balance before the first statement
VAT_PERCENT = 20
PAYE_PERCENT = 28  # income tax and employer contributions, as a share of gross payroll


@dataclass(frozen=True)
class Company:
    """The demo company's business as tables; money in integer pence, dates as numpy datetime64[D]."""

    start: date
    end: date
    clients: pd.DataFrame       # client_id, name, segment, country, created_on, region
    sales: pd.DataFrame         # order_no, line_no, order_date, client_id, product, quantity, unit_price, amount
    payments: pd.DataFrame      # payment_no, payment_date, client_id, invoice, method, bank, amount (GBP account)
    costs: pd.DataFrame         # cost_no, cost_date, category, vendor, amount
    tax: pd.DataFrame           # period, tax_type, amount, due_date
    interactions: pd.DataFrame  # activity_no, occurred_at (local naive), client_id, channel, outcome
    # lines crediting goods sent back (negative quantity and amount), columns as sales: the business system
    # exports them with the order lines; its order API does not serve them
    returns: pd.DataFrame
    # the euro account: txn_no, booked, client_id, invoice, type, debit, credit (euro cents, one of the two)
    euro_account: pd.DataFrame

    @cached_property
    def order_lines(self) -> pd.DataFrame:
        """The order lines the sales export holds: orders and the returns credited on them."""
        lines = pd.concat([self.sales, self.returns], ignore_index=True)
        return lines.sort_values(["order_no", "line_no"], kind="stable").reset_index(drop=True)

    @cached_property
    def invoiced(self) -> np.ndarray:
        """Per order line: whether it is a trade account's, invoiced in the accounting system (else the shop's)."""
        trade = self.clients["client_id"][self.clients["segment"].isin(INVOICED_SEGMENTS)]
        return self.order_lines["client_id"].isin(trade).to_numpy()

    @property
    def invoice_lines(self) -> pd.DataFrame:
        """The order lines the accounting system's invoices hold (returns as negative lines): served by its API."""
        return self.order_lines[self.invoiced].reset_index(drop=True)

    @property
    def shop_lines(self) -> pd.DataFrame:
        """The order lines the shop's order system exports as CSV files."""
        return self.order_lines[~self.invoiced].reset_index(drop=True)


def history_start(end: date, years: int) -> date:
    """The first day of `years` years of history ending on `end` (2026-11-30, 3 -> 2023-12-01)."""
    try:
        return end.replace(year=end.year - years) + timedelta(days=1)
    except ValueError:  # 29 February
        return end.replace(year=end.year - years, day=28) + timedelta(days=1)


def build_company(seed: int = DEFAULT_SEED, end: date = DEFAULT_END, years: int = 3, clients: int = 300) -> Company:
    if years < 1 or clients < 20:
        raise ValueError("the demo company needs at least one year of history and 20 clients")
    start = history_start(end, years)
    rngs = [np.random.default_rng([seed, i]) for i in range(9)]
    client_df, weight = _clients(rngs[0], clients, start, end)
    client_df["region"] = _regions(rngs[6], client_df["country"].to_numpy())
    sales = _sales(rngs[1], client_df, weight, start, end)
    returns = _returns(rngs[7], sales)
    lines = pd.concat([sales, returns], ignore_index=True)
    payments = _payments(rngs[2], client_df, lines, end)
    euro = client_df["client_id"][client_df["country"].isin(EURO_COUNTRIES)]
    in_euros = payments["client_id"].isin(euro)
    euro_account = _euro_account(rngs[8], payments[in_euros], end)
    payments = payments[~in_euros].reset_index(drop=True)
    costs = _costs(rngs[3], start, end)
    tax = _tax(lines, costs, start, end)
    interactions = _interactions(rngs[5], client_df, weight, start, end)
    return Company(start, end, client_df, sales, payments, costs, tax, interactions, returns, euro_account)


def _regions(rng: np.random.Generator, country: np.ndarray) -> np.ndarray:
    gb = rng.choice(GB_REGIONS, len(country), p=GB_REGION_P)
    return np.array([REGION_OF_COUNTRY.get(c, g) for c, g in zip(country, gb, strict=True)], dtype=object)


def _returns(rng: np.random.Generator, sales: pd.DataFrame) -> pd.DataFrame:
    """A few orders have goods sent back: a line crediting part of one of their lines, at its price."""
    orders = sales["order_no"].unique()
    picked = np.sort(rng.choice(orders, max(1, int(len(orders) * RETURN_SHARE)), replace=False))
    last = sales.groupby("order_no")["line_no"].max()
    rows = []
    for order_no in picked:
        lines = sales[sales["order_no"] == order_no]
        line = lines.iloc[int(rng.integers(0, len(lines)))]
        back = int(rng.integers(1, int(line["quantity"]) + 1))
        rows.append((order_no, int(last[order_no]) + 1, line["order_date"], line["client_id"], line["product"],
                     -back, int(line["unit_price"]), -back * int(line["unit_price"])))
    df = pd.DataFrame(rows, columns=list(sales.columns))
    for column in ("order_no", "line_no", "quantity", "unit_price", "amount"):
        df[column] = df[column].astype(np.int64)
    df["order_date"] = df["order_date"].to_numpy().astype("datetime64[D]")
    return df


def _euro_account(rng: np.random.Generator, paid: pd.DataFrame, end: date) -> pd.DataFrame:
    """The euro account's bookings: the euro clients' payments, credited in euros at the month's rate, and a
    few refunds paid back to them (debits) some days after a payment."""
    columns = ["txn_no", "booked", "client_id", "invoice", "type", "debit", "credit"]
    if paid.empty:
        return pd.DataFrame({c: pd.Series(dtype="datetime64[s]" if c == "booked" else object) for c in columns})
    days = paid["payment_date"].to_numpy().astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    # euros per pound, in ten-thousandths, one rate a month
    first, last = months.min(), months.max()
    rates = dict(zip(np.arange(first, last + 1), rng.integers(11_300, 11_900, int((last - first).astype(int)) + 1),
                     strict=True))
    credit = np.array([(int(p) * int(rates[m]) + 5_000) // 10_000 for p, m in zip(paid["amount"], months,
                                                                                    strict=True)], dtype=np.int64)
    credits = pd.DataFrame({"booked": days, "client_id": paid["client_id"].to_numpy(),
                            "invoice": paid["invoice"].to_numpy(), "type": "SEPA credit",
                            "debit": np.zeros(len(paid), dtype=np.int64), "credit": credit})
    refunded = rng.random(len(paid)) < 0.04
    share = rng.integers(5, 41, len(paid))
    debits = pd.DataFrame({"booked": _next_weekday(days + rng.integers(7, 29, len(paid)))[refunded],
                           "client_id": paid["client_id"].to_numpy()[refunded],
                           "invoice": paid["invoice"].to_numpy()[refunded], "type": "SEPA refund",
                           "debit": (credit * share // 100)[refunded], "credit": np.zeros(int(refunded.sum()),
                                                                                           dtype=np.int64)})
    df = pd.concat([credits, debits[debits["booked"] <= np.datetime64(end)]], ignore_index=True)
    df = df.sort_values(["booked", "type", "client_id", "invoice"], kind="stable").reset_index(drop=True)
    df.insert(0, "txn_no", np.arange(1, len(df) + 1) + 700_000)
    return df


def _clients(rng: np.random.Generator, n: int, start: date, end: date) -> tuple[pd.DataFrame, np.ndarray]:
    codes = np.sort(rng.choice(np.arange(1, 1000 if n < 900 else 100_000), size=n, replace=False))
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        a, b, c = rng.choice(_NAME_A), rng.choice(_NAME_B), rng.choice(_NAME_C)
        name = f"{a} {b} {c}".strip()
        if name in seen:
            name = f"{a} {b}, {rng.choice(_NAME_A)} {c}".strip()
        if name not in seen:
            seen.add(name)
            names.append(name)
    # a fifth of the clients join during the period, the others were already trading with us
    joins = rng.random(n) < 0.2
    span = (end - start).days
    established = np.datetime64("2012-01-01") + rng.integers(0, (start - date(2012, 1, 1)).days, n)
    newcomers = np.datetime64(start) + rng.integers(30, int(span * 0.9), n)
    created = np.where(joins, newcomers, established).astype("datetime64[D]")
    # Pareto demand: a handful of large accounts, a long tail of small ones
    weight = 1.0 / np.arange(1, n + 1) ** 0.7
    weight = weight[rng.permutation(n)]
    weight = weight / weight.sum()
    df = pd.DataFrame({
        "client_id": [f"{c:05d}" for c in codes],
        "name": names,
        "segment": rng.choice(SEGMENTS, n),
        "country": rng.choice(COUNTRIES, n, p=COUNTRY_P),
        "created_on": created,
    })
    return df, weight


def _sales(rng: np.random.Generator, clients: pd.DataFrame, weight: np.ndarray, start: date,
           end: date) -> pd.DataFrame:
    days = np.arange(np.datetime64(start), np.datetime64(end) + 1, dtype="datetime64[D]")
    t = (days - days[0]).astype(float) / 365.25
    weekday = (days.astype("int64") - 4) % 7  # 1970-01-01 was a Thursday
    doy = (days - days.astype("datetime64[Y]")).astype(float)
    season = 1 + 0.14 * np.cos(2 * np.pi * (doy - 345) / 365.25) - 0.06 * np.exp(-((doy - 222) / 18) ** 2)
    shape = 1.15 ** t * WEEKDAY_FACTOR[weekday] * season
    orders_per_day = rng.poisson(40 * shape / shape.mean())
    order_date = np.repeat(days, orders_per_day)
    n_orders = len(order_date)

    # a client may only order once it is a client: such draws go to the established clients
    created = clients["created_on"].to_numpy().astype("datetime64[D]")
    first = rng.choice(len(clients), n_orders, p=weight)
    old = created < np.datetime64(start)
    w_old = np.where(old, weight, 0.0)
    fallback = rng.choice(len(clients), n_orders, p=w_old / w_old.sum())
    order_client = np.where(created[first] <= order_date, first, fallback)

    lines = rng.choice([1, 2, 3, 4], n_orders, p=[0.2, 0.3, 0.3, 0.2])
    n_lines = int(lines.sum())
    order_idx = np.repeat(np.arange(n_orders), lines)
    line_no = np.arange(n_lines) - np.repeat(np.cumsum(lines) - lines, lines) + 1
    names = np.array(list(PRODUCTS))
    popularity = rng.dirichlet(np.full(len(names), 1.5))
    product = rng.choice(len(names), n_lines, p=popularity)
    year_idx = ((order_date[order_idx] - days[0]).astype("int64") // 365)
    base = np.array(list(PRODUCTS.values()), dtype=np.int64)
    unit_price = np.rint(base[product] * (1 + INFLATION) ** year_idx).astype(np.int64)
    quantity = (rng.geometric(0.3, n_lines) + (weight[order_client[order_idx]] > 0.01) * 2).astype(np.int64)
    return pd.DataFrame({
        "order_no": 1001 + order_idx,
        "line_no": line_no.astype(np.int64),
        "order_date": order_date[order_idx],
        "client_id": clients["client_id"].to_numpy()[order_client[order_idx]],
        "product": names[product],
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": quantity * unit_price,
    })


def _next_weekday(days: np.ndarray) -> np.ndarray:
    weekday = (days.astype("int64") - 4) % 7
    return days + np.where(weekday == 5, 2, np.where(weekday == 6, 1, 0))


def _payments(rng: np.random.Generator, clients: pd.DataFrame, sales: pd.DataFrame, end: date) -> pd.DataFrame:
    """Clients are invoiced monthly for their order lines and pay 10-55 days after the month closes."""
    month = sales["order_date"].to_numpy().astype("datetime64[M]")
    inv = (pd.DataFrame({"client_id": sales["client_id"].to_numpy(), "month": month, "amount": sales["amount"]})
           .groupby(["month", "client_id"], sort=True, as_index=False)["amount"].sum())
    month_end = (inv["month"].to_numpy().astype("datetime64[M]") + 1).astype("datetime64[D]") - 1
    n = len(inv)
    paid = _next_weekday(month_end + rng.integers(10, 56, n))
    split = rng.random(n) < 0.08  # some invoices are settled in two instalments
    first_part = np.where(split, inv["amount"].to_numpy() * rng.integers(30, 71, n) // 100, inv["amount"])
    second_paid = _next_weekday(paid + rng.integers(14, 29, n))
    method_of = dict(zip(clients["client_id"], rng.choice(METHODS, len(clients), p=METHOD_P), strict=True))
    invoice = ("INV-" + pd.Series(inv["month"].to_numpy().astype("datetime64[M]")).dt.strftime("%Y%m")
               + "-" + inv["client_id"]).to_numpy()
    parts = pd.DataFrame({
        "payment_date": np.concatenate([paid, second_paid[split]]),
        "client_id": np.concatenate([inv["client_id"], inv["client_id"][split]]),
        "invoice": np.concatenate([invoice, invoice[split]]),
        "amount": np.concatenate([first_part, (inv["amount"].to_numpy() - first_part)[split]]).astype(np.int64),
    })
    parts = parts[parts["payment_date"] <= np.datetime64(end)]
    parts = parts.sort_values(["payment_date", "client_id", "invoice", "amount"], kind="stable").reset_index(drop=True)
    parts["method"] = parts["client_id"].map(method_of)
    parts["bank"] = rng.choice(BANKS, len(parts), p=(0.6, 0.4))
    parts.insert(0, "payment_no", np.arange(1, len(parts) + 1) + 20_000)
    return parts[["payment_no", "payment_date", "client_id", "invoice", "method", "bank", "amount"]]


def _costs(rng: np.random.Generator, start: date, end: date) -> pd.DataFrame:
    """Operating costs by category: fixed monthly bills, weekly payroll, and irregular spend."""
    rows: list[tuple[date, str, str, int]] = []
    day = start
    while day <= end:
        years = (day - start).days / 365.25
        weekday = day.weekday()
        first_working = day.day <= 3 and weekday < 5 and all(
            (day - timedelta(days=k)).weekday() >= 5 for k in range(1, day.day))
        if first_working:
            rows.append((day, "Rent", "Harbour Estates", round(425_000 * 1.03 ** int(years))))
            winter = 1.45 if day.month in (11, 12, 1, 2, 3) else 1.0
            rows.append((day, "Utilities", "British Gas Business", int(rng.integers(52_000, 68_000) * winter)))
            rows.append((day, "Utilities", "Thames Water", int(rng.integers(9_000, 14_000))))
            rows.append((day, "IT", "Microsoft UK", round(64_000 * 1.05 ** int(years))))
            if day.month in (1, 4, 7, 10):
                rows.append((day, "Insurance", "Aviva Business", round(210_000 * 1.04 ** int(years))))
        if weekday == 4:
            rows.append((day, "Payroll", "Northwind Payroll", int(1_850_000 * 1.08 ** years
                                                                  + rng.integers(-40_000, 60_000))))
        if weekday < 5:
            for _ in range(int(rng.poisson(0.6))):
                vendor = str(rng.choice(("DPD UK", "Palletways", "Fowler Haulage")))
                rows.append((day, "Logistics", vendor, int(rng.integers(18_000, 160_000))))
            if rng.random() < 0.09:
                vendor = str(rng.choice(("Google Ads", "Meta Ads", "Brightside Print")))
                rows.append((day, "Marketing", vendor, int(rng.integers(15_000, 320_000))))
            if rng.random() < 0.07:
                vendor = str(rng.choice(("Dunmore; Hale Facilities", "Kwik Fix Ltd")))
                rows.append((day, "Maintenance", vendor, int(rng.integers(8_000, 95_000))))
            if rng.random() < 0.01:
                rows.append((day, "IT", "Dell Technologies", int(rng.integers(60_000, 240_000))))
        day += timedelta(days=1)
    df = pd.DataFrame(rows, columns=["cost_date", "category", "vendor", "amount"])
    df["cost_date"] = df["cost_date"].to_numpy().astype("datetime64[D]")
    df["amount"] = df["amount"].astype(np.int64)
    df.insert(0, "cost_no", np.arange(1, len(df) + 1) + 4_000)
    return df


def _tax(sales: pd.DataFrame, costs: pd.DataFrame, start: date, end: date) -> pd.DataFrame:
    """Monthly VAT (output on sales less input on VAT-able costs) and PAYE on payroll, half-up to the penny."""
    months = np.arange(np.datetime64(start, "M"), np.datetime64(end, "M") + 1)
    s = sales.groupby(sales["order_date"].to_numpy().astype("datetime64[M]"))["amount"].sum()
    vatable = costs[costs["category"].isin(["Utilities", "Logistics", "Marketing", "IT", "Maintenance"])]
    c = vatable.groupby(vatable["cost_date"].to_numpy().astype("datetime64[M]"))["amount"].sum()
    payroll = costs[costs["category"] == "Payroll"]
    p = payroll.groupby(payroll["cost_date"].to_numpy().astype("datetime64[M]"))["amount"].sum()
    rows = []
    for m in months:
        period = m.astype("datetime64[D]")
        next_month = (m + 1).astype("datetime64[D]")
        vat = (int(s.get(m, 0)) - int(c.get(m, 0))) * VAT_PERCENT
        one_month_seven_days = (m + 2).astype("datetime64[D]") - 1 + 7
        rows.append((period, "VAT", (vat + 50) // 100, one_month_seven_days))
        paye = int(p.get(m, 0)) * PAYE_PERCENT
        rows.append((period, "PAYE", (paye + 50) // 100, next_month + 21))  # the 22nd of the next month
    df = pd.DataFrame(rows, columns=["period", "tax_type", "amount", "due_date"])
    df["amount"] = df["amount"].astype(np.int64)
    return df


def _interactions(rng: np.random.Generator, clients: pd.DataFrame, weight: np.ndarray, start: date,
                  end: date) -> pd.DataFrame:
    days = np.arange(np.datetime64(start), np.datetime64(end) + 1, dtype="datetime64[D]")
    weekday = (days.astype("int64") - 4) % 7
    per_day = rng.poisson(14 * np.where(weekday < 5, 1.0, 0.15))
    day = np.repeat(days, per_day)
    n = len(day)
    minute = 8 * 60 + rng.integers(0, 10 * 12, n) * 5  # 08:00-17:55, in 5-minute steps
    occurred = day.astype("datetime64[m]") + minute
    occurred.sort()
    w = np.sqrt(weight)
    who = rng.choice(len(clients), n, p=w / w.sum())
    return pd.DataFrame({
        "activity_no": np.arange(1, n + 1) + 100_000,
        "occurred_at": occurred,
        "client_id": clients["client_id"].to_numpy()[who],
        "channel": rng.choice(CHANNELS, n, p=CHANNEL_P),
        "outcome": rng.choice(OUTCOMES, n, p=OUTCOME_P),
    })
