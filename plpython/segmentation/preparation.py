"""Feature preparation: clamp, impute, log-transform and standardise raw player features.

The same :meth:`Preparation.transform` runs at calibration and at scoring, so a player
is always seen through exactly the transformation the model was fitted on.

Rules (all decided on the calibration population and frozen in :class:`Preparation`):

* **Missing / bad data** - every non-finite raw entry (NaN, +inf, -inf) is replaced by
  the training median of that feature's finite values, and counted.
* **Clamp** - raw values are clamped to ``[lower, upper]`` where ``lower = 0`` for a
  feature that is non-negative on the training data (so negative garbage cannot reach
  ``log1p``) and ``lower = min - CLIP_MARGIN * span`` otherwise; ``upper = max +
  CLIP_MARGIN * span`` (``span = max - min`` of the finite training values). The upper
  bound is deliberately loose: values beyond the training range stay extreme (and thus
  anomalous) but unit bugs such as ``1e300`` cannot overflow downstream arithmetic.
* **Log** - a feature is ``log1p``-transformed when it is non-negative and heavy-tailed:
  sample skewness of its finite training values ``> SKEW_THRESHOLD`` (1.0).
* **Drop** - a feature with no finite training value is dropped as ``"all_missing"``;
  one whose transformed training column has zero variance as ``"constant"``.
* **Standardise** - ``(t - center) / scale`` with the mean and population standard
  deviation (ddof=0) of the transformed, imputed training column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SKEW_THRESHOLD = 1.0
CLIP_MARGIN = 10.0
# Relative tolerance below which a transformed column counts as constant: float noise
# from imputation must not turn a constant column into a unit-variance noise feature.
_CONSTANT_RTOL = 1e-12


@dataclass
class PreparationReport:
    """What :func:`fit_preparation` did to the calibration data.

    ``dropped`` maps feature -> ``"constant"`` | ``"all_missing"``; ``non_finite`` maps each
    kept feature with at least one NaN/inf to the number of entries replaced by the median;
    ``log_transformed`` lists the features that were ``log1p``-transformed.
    """

    dropped: dict[str, str] = field(default_factory=dict)
    non_finite: dict[str, int] = field(default_factory=dict)
    log_transformed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dropped": dict(self.dropped),
            "non_finite": dict(self.non_finite),
            "log_transformed": list(self.log_transformed),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreparationReport:
        return cls(
            dropped={str(k): str(v) for k, v in d["dropped"].items()},
            non_finite={str(k): int(v) for k, v in d["non_finite"].items()},
            log_transformed=[str(x) for x in d["log_transformed"]],
        )


@dataclass
class Preparation:
    """Frozen per-feature transformation from raw units to standardised ``Z``.

    All arrays have one entry per kept feature, in ``feature_names`` order (p kept):
    ``log_transform`` (p,) bool; ``impute`` (p,) raw units; ``center``/``scale`` (p,) in
    transformed units; ``clip`` (p, 2) raw-unit ``[lower, upper]``.
    """

    feature_names: list[str]
    log_transform: np.ndarray
    impute: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    clip: np.ndarray

    def __post_init__(self) -> None:
        self.feature_names = [str(f) for f in self.feature_names]
        self.log_transform = np.asarray(self.log_transform, dtype=bool).reshape(-1)
        self.impute = np.asarray(self.impute, dtype=np.float64).reshape(-1)
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        self.scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        self.clip = np.asarray(self.clip, dtype=np.float64).reshape(-1, 2)
        p = len(self.feature_names)
        for name in ("log_transform", "impute", "center", "scale", "clip"):
            if getattr(self, name).shape[0] != p:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} rows, expected {p}")

    def column_index(self, feature_names_full: list[str] | tuple[str, ...]) -> np.ndarray:
        """Positions (p,) of the kept features inside ``feature_names_full``."""
        position = {name: i for i, name in enumerate(feature_names_full)}
        missing = [f for f in self.feature_names if f not in position]
        if missing:
            raise KeyError(f"features required by the model are missing: {missing}")
        return np.array([position[f] for f in self.feature_names], dtype=np.intp)

    def transform(
        self,
        X_raw_full: np.ndarray,
        feature_names_full: list[str] | tuple[str, ...] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw features -> standardised ``Z``.

        ``X_raw_full`` is (n, q) raw units (a single row (q,) is accepted). With
        ``feature_names_full`` (q names) the kept columns are selected by name; without
        it the columns must already be the kept features in ``feature_names`` order.

        Returns ``(Z, n_non_finite)``: ``Z`` (n, p) standardised float64 and
        ``n_non_finite`` (n,) int, the number of NaN/inf entries imputed per row.
        """
        X = np.asarray(X_raw_full, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if feature_names_full is not None:
            X = X[:, self.column_index(feature_names_full)]
        elif X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected {len(self.feature_names)} columns {self.feature_names}, "
                f"got {X.shape[1]}; pass feature_names_full to select by name"
            )
        else:
            X = X.copy()
        finite = np.isfinite(X)
        n_non_finite = (~finite).sum(axis=1)
        if not finite.all():
            X = np.where(finite, X, self.impute)
        np.clip(X, self.clip[:, 0], self.clip[:, 1], out=X)
        if self.log_transform.any():
            m = self.log_transform
            X[:, m] = np.log1p(X[:, m])
        X -= self.center
        X /= self.scale
        return X, n_non_finite

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Standardised ``Z`` (n, p) -> raw units (n, p); undoes standardisation and log only.

        Used to express model-space points (e.g. segment centroids) in raw units; it is
        not an exact inverse for clamped or imputed entries.
        """
        T = np.asarray(Z, dtype=np.float64) * self.scale + self.center
        if self.log_transform.any():
            m = self.log_transform
            T[..., m] = np.expm1(T[..., m])
        return T

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": list(self.feature_names),
            "log_transform": [bool(b) for b in self.log_transform],
            "impute": self.impute.tolist(),
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "clip": self.clip.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preparation:
        return cls(
            feature_names=list(d["feature_names"]),
            log_transform=np.array(d["log_transform"], dtype=bool),
            impute=np.array(d["impute"], dtype=np.float64),
            center=np.array(d["center"], dtype=np.float64),
            scale=np.array(d["scale"], dtype=np.float64),
            clip=np.array(d["clip"], dtype=np.float64).reshape(-1, 2),
        )


def fit_preparation(
    X: np.ndarray, feature_names: list[str]
) -> tuple[Preparation, PreparationReport]:
    """Learn the preparation rules (see module docstring) from raw ``X`` (n, q).

    ``feature_names`` has q entries. Returns the frozen :class:`Preparation` over the kept
    features (original order preserved) and a :class:`PreparationReport`.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names):
        raise ValueError(f"X must be (n, {len(feature_names)}), got {X.shape}")
    if X.shape[0] == 0:
        raise ValueError("cannot fit a preparation on zero rows")
    report = PreparationReport()
    kept: list[str] = []
    columns: dict[str, list[Any]] = {k: [] for k in ("log", "impute", "center", "scale", "clip")}

    for j, name in enumerate(feature_names):
        col = X[:, j]
        finite = np.isfinite(col)
        values = col[finite]
        if values.size == 0:
            report.dropped[name] = "all_missing"
            continue
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo
        non_negative = lo >= 0.0
        lower = 0.0 if non_negative else lo - CLIP_MARGIN * span
        upper = hi + CLIP_MARGIN * span
        median = float(np.median(values))
        use_log = bool(non_negative and span > 0 and _skew(values) > SKEW_THRESHOLD)

        t = np.where(finite, col, median)
        np.clip(t, lower, upper, out=t)
        if use_log:
            t = np.log1p(t)
        mean, std = float(t.mean()), float(t.std())
        if not std > _CONSTANT_RTOL * max(1.0, abs(mean)):
            report.dropped[name] = "constant"
            continue

        kept.append(name)
        n_bad = int((~finite).sum())
        if n_bad:
            report.non_finite[name] = n_bad
        if use_log:
            report.log_transformed.append(name)
        columns["log"].append(use_log)
        columns["impute"].append(median)
        columns["center"].append(mean)
        columns["scale"].append(std)
        columns["clip"].append((lower, upper))

    if not kept:
        raise ValueError("no usable feature: every feature is constant or all missing")
    prep = Preparation(
        feature_names=kept,
        log_transform=np.array(columns["log"], dtype=bool),
        impute=np.array(columns["impute"]),
        center=np.array(columns["center"]),
        scale=np.array(columns["scale"]),
        clip=np.array(columns["clip"]).reshape(-1, 2),
    )
    return prep, report


def _skew(values: np.ndarray) -> float:
    # Imported on first fit only: scoring sessions never pay for loading scipy.stats.
    from scipy.stats import skew

    return float(skew(values))
