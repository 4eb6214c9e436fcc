"""Money as the company reads it: amounts in its configured currency, e.g. £12,345.67 or £12.3k on an axis.

The symbol comes from babel when it is installed, else from a small table of common ISO 4217 codes; an
unknown code is written as the code itself ("XYZ 12.00"), never guessed.
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_UP, Context, Decimal
from functools import lru_cache

# Sums of money added without rounding: Python's default context keeps 28 significant digits, PostgreSQL's
# numeric keeps every digit. EXACT.add(a, b), or `with decimal.localcontext(EXACT):`.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)

SYMBOLS = {
    "GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "CNY": "CN¥", "INR": "₹", "CAD": "CA$", "AUD": "A$",
    "NZD": "NZ$", "HKD": "HK$", "SGD": "SGD ", "CHF": "CHF ", "SEK": "SEK ", "NOK": "NOK ", "DKK": "DKK ",
    "PLN": "PLN ", "CZK": "CZK ", "ZAR": "R", "BRL": "R$", "MXN": "MX$", "KRW": "₩", "ILS": "₪", "TRY": "TRY ",
}
# Currencies without minor units.
ZERO_DECIMALS = {"JPY", "KRW", "ISK", "CLP", "VND"}


@lru_cache(maxsize=32)
def currency_symbol(code: str) -> str:
    code = code.upper()
    try:
        from babel.numbers import get_currency_symbol
    except ImportError:
        return SYMBOLS.get(code, f"{code} ")
    symbol = get_currency_symbol(code, locale="en")
    if symbol == code:  # babel knows no symbol: write the code, spaced
        return f"{code} "
    return symbol


def minor_digits(code: str) -> int:
    return 0 if code.upper() in ZERO_DECIMALS else 2


def format_money(amount: Decimal | float | int, currency: str, decimals: int | None = None) -> str:
    """£12,345.67; a negative amount as -£12.00."""
    digits = minor_digits(currency) if decimals is None else decimals
    value = Decimal(str(amount)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    sign = "-" if value < 0 else ""
    return f"{sign}{currency_symbol(currency)}{abs(value):,.{digits}f}"


def format_compact(amount: Decimal | float | int, currency: str) -> str:
    """£950, £12.3k, £1.2M: short enough for an axis tick or a bar label."""
    value = float(amount)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for threshold, suffix in ((1e9, "bn"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            scaled = value / threshold
            text = f"{scaled:.0f}" if scaled >= 100 else f"{scaled:.1f}".removesuffix(".0")
            return f"{sign}{currency_symbol(currency)}{text}{suffix}"
    return f"{sign}{currency_symbol(currency)}{value:,.0f}"
