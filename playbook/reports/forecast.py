"""What the next weeks hold: daily sales and operating costs forecast with an 80% interval, trusted only as far as
their own history shows them to be.

The model is statsmodels' ETS (`ETSModel`: additive errors, a damped additive trend, additive weekly
seasonality). A small company's daily figures follow the week (orders on working days, deliveries on set days), move
with a trend that should not be run out for ever (damped), and are too short and too irregular for models with
many parameters; exponential smoothing is the standard answer there, it fits in a fraction of a second, and
its state-space form gives prediction intervals without simulation.

Before a forecast is drawn it is backtested on the series' own history: from each of `BACKTEST_ORIGINS` origins
(`horizon` days apart, the last one `horizon` days before the last day of data) the model is fitted on what
came before and its forecast of the next `horizon` days is compared with what happened, as is the naive
seasonal forecast (each day as the same weekday of the last week before the origin). Both mean absolute errors
per day are stated in `forecast.json` and on the chart; a model that does not beat the naive forecast is not
drawn, and the chart says so.

Every run keeps its forecast in its run folder with the day it was made from (the last day with data, so the
forecast does not depend on when it is asked) and when. A later run scores the latest earlier forecast whose
days now have actuals: what it said against what happened.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from playbook.reports import figures

FORECAST_JSON = "forecast.json"
METHOD = ("ETS: additive errors, damped additive trend, additive weekly seasonality (statsmodels ETSModel); "
          "80% prediction interval")
SERIES = {"sales": "sales_amount", "operating_costs": "operating_costs"}
BACKTEST_ORIGINS = 4
HISTORY_DAYS = 730  # what a fit sees: two years hold every weekday and season twice
MIN_DAYS = 56  # eight weeks: fewer cannot both fit a weekly pattern and backtest it
MIN_TRAIN_DAYS = 28  # what a backtest fit needs before its origin: four weeks
ALPHA = 0.2  # the interval holds 80% of outcomes


@dataclass(frozen=True)
class Series:
    name: str
    days: list[date]  # consecutive, the first to the last day with data
    values: np.ndarray


def read_series(conn, currency: str) -> list[Series]:
    """Daily sales and operating costs in `currency` from marts.daily_activity, each from its first day to its
    own last day with data, at most HISTORY_DAYS (days without a row are days without sales or costs)."""
    columns = ", ".join(SERIES.values())
    with conn.cursor() as cur:
        cur.execute(f"select day, {columns} from marts.daily_activity where currency = %s"  # noqa: S608 - our names
                    " order by day", (currency,))
        rows = cur.fetchall()
    found = []
    for position, name in enumerate(SERIES, start=1):
        last = max((r[0] for r in rows if r[position]), default=None)  # its last day with data
        if last is None:
            continue
        first = max(rows[0][0], last - timedelta(days=HISTORY_DAYS - 1))
        by_day = {r[0]: float(r[position]) for r in rows if first <= r[0] <= last}
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        found.append(Series(name, days, np.array([by_day.get(d, 0.0) for d in days])))
    return found


def _fit(values: np.ndarray):
    import pandas as pd
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    # a Series, not an array: statsmodels' prediction results label their rows with the data's index
    with warnings.catch_warnings():  # convergence chatter on short or flat series: the backtest judges the fit
        warnings.simplefilter("ignore")
        return ETSModel(pd.Series(values), error="add", trend="add", damped_trend=True, seasonal="add",
                        seasonal_periods=7).fit(disp=False)


def naive_seasonal(history: np.ndarray, horizon: int) -> np.ndarray:
    """Each day as the same weekday of the last week of history."""
    return np.resize(history[-7:], horizon)


def backtest(values: np.ndarray, horizon: int, origins: int = BACKTEST_ORIGINS) -> dict[str, Any]:
    """Mean absolute error per day of the model and of the naive seasonal forecast over `origins` windows of
    `horizon` days at the end of the series, each forecast from what came before it."""
    model, naive = [], []
    for k in range(origins, 0, -1):
        cut = len(values) - k * horizon
        if cut < MIN_TRAIN_DAYS:  # too little before this origin to fit a weekly pattern
            continue
        train, actual = values[:cut], values[cut:cut + horizon]
        model.append(np.abs(np.asarray(_fit(train).forecast(horizon)) - actual))
        naive.append(np.abs(naive_seasonal(train, horizon) - actual))
    if not model:
        return {"origins": 0, "days_scored": 0, "model_mae": None, "naive_mae": None}
    return {"origins": len(model), "days_scored": int(sum(len(m) for m in model)),
            "model_mae": round(float(np.concatenate(model).mean()), 2),
            "naive_mae": round(float(np.concatenate(naive).mean()), 2)}


def forecast_series(series: Series, horizon: int) -> dict[str, Any]:
    """The series' forecast, its backtest, and whether it is drawn (it beats the naive forecast)."""
    if len(series.values) < MIN_DAYS:
        return {"made_on": series.days[-1].isoformat() if series.days else None, "drawn": False, "days": [],
                "backtest": backtest(series.values, horizon),
                "reason": f"{len(series.values)} days of data; a forecast needs {MIN_DAYS}"}
    tested = backtest(series.values, horizon)
    beats = tested["model_mae"] is not None and tested["model_mae"] < tested["naive_mae"]
    fit = _fit(series.values)
    n = len(series.values)
    frame = fit.get_prediction(start=n, end=n + horizon - 1).summary_frame(alpha=ALPHA)
    last = series.days[-1]
    days = [{"day": (last + timedelta(days=i + 1)).isoformat(), "mean": round(float(m), 2),
             "lower": round(float(lo), 2), "upper": round(float(hi), 2)}
            for i, (m, lo, hi) in enumerate(zip(frame["mean"], frame["pi_lower"], frame["pi_upper"], strict=True))]
    if beats:
        reason = None
    elif tested["model_mae"] is None:
        reason = f"{len(series.values)} days of data are too few to backtest a {horizon}-day forecast"
    else:
        reason = (f"its backtest error ({tested['model_mae']:,.2f} a day) does not beat the naive seasonal "
                  f"forecast's ({tested['naive_mae']:,.2f})")
    return {"made_on": last.isoformat(), "drawn": beats, "days": days, "backtest": tested, "reason": reason}


def make_forecast(config, currency: str, series: list[Series], horizon: int | None = None) -> dict[str, Any]:
    """The forecast document (forecast.json) of these series, in the company's currency."""
    horizon = horizon or config.reports.forecast_days
    return {"method": METHOD, "horizon_days": horizon, "company": config.company.name, "currency": currency,
            "interval": 1 - ALPHA, "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "backtest_origins": BACKTEST_ORIGINS,
            "series": {s.name: forecast_series(s, horizon) for s in series}}


def score_earlier(doc: dict[str, Any], runs: Path, this_run: Path, actuals: dict[str, dict[date, float]]) -> dict:
    """For each series, the latest earlier run's drawn forecast for the same company and currency, made from an
    earlier day, scored on its days that now have actuals: {series: {run, made_on, days_scored, mae,
    backtest_mae}} (what it erred by, against what its backtest promised)."""
    scored: dict[str, Any] = {}
    earlier = sorted((p for p in runs.glob(f"*/{FORECAST_JSON}") if p.parent.resolve() != this_run.resolve()),
                     key=lambda p: p.parent.name, reverse=True)
    for name, current in doc["series"].items():
        for path in earlier:
            try:
                kept = json.loads(path.read_text())
                old = kept["series"][name]
            except (KeyError, ValueError, OSError):
                continue
            if (kept.get("company"), kept.get("currency")) != (doc.get("company"), doc.get("currency")):
                continue  # reports/runs/ may hold another company's or another target's runs
            if not old.get("drawn") or not current.get("made_on") or old["made_on"] >= current["made_on"]:
                continue
            have = actuals.get(name, {})
            pairs = [(d["mean"], have[date.fromisoformat(d["day"])]) for d in old["days"]
                     if date.fromisoformat(d["day"]) in have]
            if not pairs:
                continue
            scored[name] = {"run": path.parent.name, "made_on": old["made_on"], "days_scored": len(pairs),
                            "mae": round(float(np.mean([abs(f - a) for f, a in pairs])), 2),
                            "backtest_mae": old["backtest"]["model_mae"]}
            break
    return scored


def write_forecast(conn, config, out_dir: Path, runs: Path | None = None) -> dict[str, Any]:
    """forecast.json in out_dir, with the latest earlier forecast (from the other run folders) scored."""
    currency = figures.company_currency(conn, config)
    series = read_series(conn, currency)
    doc = make_forecast(config, currency, series)
    actuals = {s.name: dict(zip(s.days, s.values.tolist(), strict=True)) for s in series}
    doc["earlier"] = score_earlier(doc, runs or out_dir.parent, out_dir, actuals)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FORECAST_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def describe(doc: dict[str, Any], format_money) -> list[str]:
    """One line per series for the chart and the notebook: drawn with its errors, or why not."""
    words = {"sales": "Sales", "operating_costs": "Operating costs"}
    currency = doc["currency"]
    lines = []
    for name, s in doc["series"].items():
        b = s["backtest"]
        if s["drawn"]:
            lines.append(f"{words[name]} forecast, {doc['horizon_days']} days: backtest error "
                         f"{format_money(b['model_mae'], currency, 0)} a day against "
                         f"{format_money(b['naive_mae'], currency, 0)} for the same weekday a week earlier")
        elif b["model_mae"] is not None:
            lines.append(f"{words[name]} forecast not drawn: its backtest error "
                         f"({format_money(b['model_mae'], currency, 0)} a day) does not beat the same weekday a week "
                         f"earlier ({format_money(b['naive_mae'], currency, 0)})")
        else:
            lines.append(f"{words[name]} forecast not drawn: {s['reason']}")
    return lines


def table(doc: dict[str, Any]):
    """The forecast's backtest and the earlier forecast's score, a row per series (for the reports notebook)."""
    import pandas as pd

    rows = []
    for name, s in doc["series"].items():
        b, earlier = s["backtest"], doc.get("earlier", {}).get(name, {})
        rows.append({"series": name, "made on": s["made_on"], "drawn": s["drawn"],
                     f"model error a day ({doc['currency']})": b["model_mae"],
                     f"naive error a day ({doc['currency']})": b["naive_mae"],
                     "earlier forecast (made on)": earlier.get("made_on"),
                     "its error a day on what happened": earlier.get("mae")})
    return pd.DataFrame(rows).set_index("series")
