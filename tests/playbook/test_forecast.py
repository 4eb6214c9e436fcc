"""The activity chart's forecast: backtested against the naive seasonal forecast (worked out here with pandas),
drawn only when it beats it, and scored later against what happened."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from playbook.reports import forecast

HORIZON = 28


def naive_mae_with_pandas(values: np.ndarray, horizon: int, origins: int) -> float:
    """Each backtest window forecast as the same weekday of the week before its origin, in pandas."""
    s = pd.Series(values, index=pd.date_range("2024-01-01", periods=len(values), freq="D"))
    errors = []
    for k in range(origins, 0, -1):
        origin = len(s) - k * horizon
        window = s.iloc[origin:origin + horizon]
        last_week = s.iloc[origin - 7:origin]
        by_weekday = dict(zip(last_week.index.day_of_week, last_week.to_numpy(), strict=True))
        errors += [abs(v - by_weekday[d.day_of_week]) for d, v in window.items()]
    return round(float(np.mean(errors)), 2)


def weekly_series(days: int, noise: float, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    week = np.array([900.0, 1100, 1000, 1200, 1500, 300, 100])
    trend = np.linspace(0, 400, days)
    return np.resize(week, days) + trend + rng.normal(0, noise, days)


def test_the_backtest_s_naive_error_is_the_same_weekday_a_week_before_each_origin():
    values = weekly_series(400, noise=150)
    tested = forecast.backtest(values, HORIZON)
    assert tested["origins"] == forecast.BACKTEST_ORIGINS and tested["days_scored"] == 4 * HORIZON
    assert tested["naive_mae"] == naive_mae_with_pandas(values, HORIZON, forecast.BACKTEST_ORIGINS)


def test_a_trending_weekly_series_is_forecast_better_than_last_week_and_drawn():
    values = weekly_series(400, noise=150)
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(400)]
    made = forecast.forecast_series(forecast.Series("sales", days, values), HORIZON)
    b = made["backtest"]
    assert b["model_mae"] < b["naive_mae"] and made["drawn"] and made["reason"] is None
    assert made["made_on"] == days[-1].isoformat()
    assert [d["day"] for d in made["days"]] == [(days[-1] + timedelta(days=i)).isoformat() for i in range(1, 29)]
    assert all(d["lower"] < d["mean"] < d["upper"] for d in made["days"])
    # the forecast keeps the week's shape: its Saturdays and Sundays below its weekdays
    weekday = {date.fromisoformat(d["day"]).weekday(): d["mean"] for d in made["days"][:7]}
    assert max(weekday[5], weekday[6]) < min(weekday[d] for d in range(5))


def test_a_model_that_does_not_beat_the_naive_forecast_is_not_drawn_and_the_chart_says_why():
    values = np.resize(np.array([900.0, 1100, 1000, 1200, 1500, 300, 100]), 200)  # last week is exactly right
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(200)]
    made = forecast.forecast_series(forecast.Series("sales", days, values), HORIZON)
    assert made["backtest"]["naive_mae"] == 0 and not made["drawn"]
    doc = {"currency": "GBP", "horizon_days": HORIZON, "series": {"sales": made}}
    [line] = forecast.describe(doc, lambda v, k, d: f"£{v:,.{d}f}")
    assert line.startswith("Sales forecast not drawn: its backtest error (£") and line.endswith(
        "does not beat the same weekday a week earlier (£0)")


def test_too_short_a_history_is_not_forecast():
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(30)]
    made = forecast.forecast_series(forecast.Series("sales", days, weekly_series(30, 10)), HORIZON)
    assert not made["drawn"] and made["reason"] == "30 days of data; a forecast needs 56"


def test_a_long_horizon_on_a_short_history_is_not_backtested_from_too_little():
    """91 days ahead (the configuration's most) from 100 days of data: no origin leaves four weeks to fit on, so
    nothing is drawn, and the reason says so; nothing fails."""
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(100)]
    made = forecast.forecast_series(forecast.Series("sales", days, weekly_series(100, 50)), 91)
    assert made["backtest"]["origins"] == 0 and not made["drawn"]
    assert made["reason"] == "100 days of data are too few to backtest a 91-day forecast"


def test_a_later_run_scores_the_latest_earlier_forecast_against_what_happened(tmp_path):
    """Earlier runs: the latest drawn forecast of the same company and currency made from an earlier day is
    scored, on the days that now have actuals (its mean absolute error worked out here with pandas); another
    company's, an undrawn one and one made from this run's own day are not."""
    runs = tmp_path / "runs"

    def keep(run: str, made_on: date, means: list[float], company: str = "Northwind", drawn: bool = True) -> None:
        (runs / run).mkdir(parents=True)
        days = [{"day": (made_on + timedelta(days=i + 1)).isoformat(), "mean": m, "lower": m - 1, "upper": m + 1}
                for i, m in enumerate(means)]
        (runs / run / forecast.FORECAST_JSON).write_text(json.dumps({
            "company": company, "currency": "GBP", "series": {"sales": {
                "made_on": made_on.isoformat(), "drawn": drawn, "days": days, "backtest": {"model_mae": 12.5}}}}))

    keep("20240101T000000Z", date(2024, 3, 1), [1.0] * 10)
    keep("20240105T000000Z", date(2024, 3, 4), [100.0, 200.0, 300.0, 400.0])
    keep("20240106T000000Z", date(2024, 3, 5), [0.0, 0.0], company="Another Ltd")
    keep("20240107T000000Z", date(2024, 3, 5), [0.0, 0.0], drawn=False)
    keep("20240109T000000Z", date(2024, 3, 8), [5.0])  # made from this run's own day
    this = runs / "20240110T000000Z"
    actuals = {"sales": {date(2024, 3, 5): 110.0, date(2024, 3, 6): 150.0, date(2024, 3, 7): 330.0}}
    doc = {"company": "Northwind", "currency": "GBP", "series": {"sales": {"made_on": "2024-03-08"}}}
    scored = forecast.score_earlier(doc, runs, this, actuals)
    expected = (pd.Series([100.0, 200.0, 300.0]) - pd.Series([110.0, 150.0, 330.0])).abs().mean()
    assert scored == {"sales": {"run": "20240105T000000Z", "made_on": "2024-03-04", "days_scored": 3,
                                "mae": pytest.approx(expected), "backtest_mae": 12.5}}
