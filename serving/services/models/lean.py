"""Lean execution of a registered PyCaret pipeline: its fitted steps run directly on numpy, checked identical at load.

A PyCaret `Pipeline.predict` spends most of its time in per-call pandas work around the fitted objects (about 2.5 to
6 ms per call whatever the rows, against well under 0.1 ms for the estimator itself). For the steps it knows (the
target's label encoding, mean/median/mode/constant imputation of numeric columns, empty wrappers, train-only steps
such as imbalance fixing), `build_lean` compiles the pipeline into a few numpy operations plus the fitted estimator's
own `predict`. `verify` then compares the lean path with the model's own `predict` on the logged input example and a
reference sample; any step it does not know, or any difference, keeps the model's own path (and says why).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contracts.api import FeatureValue, Label
from serving.services.models.signature import FLOAT_TYPES, FeatureSpec, native_label

if TYPE_CHECKING:
    from serving.services.models.served import ServedModel

logger = logging.getLogger(__name__)

REFERENCE_ROWS = 256
"""Rows of the synthetic reference sample drawn around the input example (besides the example itself)."""

_IMPUTE = {"mean", "median", "most_frequent", "constant"}


class Unsupported(Exception):
    """The pipeline has a step the lean path does not reproduce."""


@dataclass(frozen=True)
class LeanPath:
    """A pipeline compiled to numpy operations and its fitted estimator.

    Attributes:
        columns: The estimator's input columns, in its order.
        fills: (column index, value) imputations for missing values, in pipeline order.
        estimator: The fitted final estimator (a shallow copy without feature names: it gets a bare array).
        classes: The target label encoder's classes (index -> label), or None when the target was not encoded.
        dtype: The array dtype the estimator gets.
    """

    columns: tuple[str, ...]
    fills: tuple[tuple[int, float], ...]
    estimator: Any
    classes: np.ndarray | None
    dtype: str
    estimator_predict: Callable[[np.ndarray], Any] | None = None
    """The estimator's own computation without its per-call overhead (see `forest_predict`, `gaussian_nb_predict`);
    None: its `predict`."""

    def predict(self, rows: Sequence[Mapping[str, FeatureValue | None]]) -> list[Label]:
        """Predict checked rows (outputs of `ServedModel.check`) in one estimator call."""
        x = np.array(
            [[np.nan if (v := row.get(c)) is None else v for c in self.columns] for row in rows], dtype=self.dtype
        )
        if self.fills and (missing := np.isnan(x)).any():  # one check for the batch; most batches miss nothing
            for index, value in self.fills:
                x[missing[:, index], index] = value
        y = np.asarray((self.estimator_predict or self.estimator.predict)(x))
        if self.classes is not None:
            y = self.classes[y.astype(np.intp)]
        return [native_label(v) for v in y]


def forest_predict(forest: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A random or extra-trees classifier's `predict` without joblib: the same computation, minus the overhead.

    scikit-learn's `predict_proba` dispatches one joblib task per tree, which costs far more than the tree itself
    for a few rows (about 2 ms for 100 trees). With `n_jobs` 1 it adds each tree's leaf values to the sum in the
    forest's order, divides by the number of trees and takes the arg-max; so does this, on the same float32 array,
    so the result is the same to the bit (and `verify` checks it). Input that is not finite goes to the forest's own
    `predict`, which refuses it as before.

    Args:
        forest: A fitted estimator.

    Returns:
        `predict(x)` for a fitted single-output `RandomForestClassifier` or `ExtraTreesClassifier`; None for any
        other estimator.
    """
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    if type(forest) not in (RandomForestClassifier, ExtraTreesClassifier) or getattr(forest, "n_outputs_", 0) != 1:
        return None
    n_classes = int(forest.n_classes_)
    trees = [tree.tree_ for tree in forest.estimators_]
    if not trees or any(t.n_outputs != 1 for t in trees):
        return None
    # What `Tree.predict` takes its rows from: each node's class fractions (one output), all trees' nodes in one
    # array (tree i's nodes start at offsets[i]), so that one `take` gathers every tree's leaves.
    leaf_values = [np.ascontiguousarray(t.value[:, 0, :n_classes], dtype=np.float64) for t in trees]
    offsets = np.cumsum([0] + [len(v) for v in leaf_values[:-1]]).astype(np.intp)[:, None]
    all_values = np.concatenate(leaf_values)
    classes = forest.classes_
    count = len(trees)

    def predict(x: np.ndarray) -> np.ndarray:
        x32 = np.asarray(x, dtype=np.float32)
        if x32.ndim != 2 or not np.isfinite(x32).all():
            return np.asarray(forest.predict(x))
        leaves = np.empty((count, x32.shape[0]), dtype=np.intp)
        for i, tree in enumerate(trees):
            leaves[i] = tree.apply(x32)
        leaves += offsets
        # A reduction over the first axis adds the trees' values one after another, in the forest's order.
        proba = np.add.reduce(all_values.take(leaves, axis=0), axis=0)
        proba /= count
        return np.asarray(classes.take(np.argmax(proba, axis=1), axis=0))

    return predict


def gaussian_nb_predict(nb: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A Gaussian naive Bayes classifier's `predict` without its input validation: the same computation.

    scikit-learn's `predict` checks the array (most of its cost for a few rows), then takes the arg-max of the joint
    log-likelihood. The lean path hands it a 2-D float array of the estimator's width; this checks that the
    values are finite and calls the same likelihood, so the result is the same to the bit (and `verify` checks it).
    Any other input goes to the estimator's own `predict`, which refuses it as before.

    Args:
        nb: A fitted estimator.

    Returns:
        `predict(x)` for a fitted `GaussianNB`; None for any other estimator.
    """
    from sklearn.naive_bayes import GaussianNB

    if type(nb) is not GaussianNB:
        return None
    width = int(nb.n_features_in_)
    classes = nb.classes_

    def predict(x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != width or x.dtype.kind != "f" or not np.isfinite(x).all():
            return np.asarray(nb.predict(x))
        return np.asarray(classes[np.argmax(nb._joint_log_likelihood(x), axis=1)])

    return predict


def _wrapped(step: Any) -> Any:
    return getattr(step, "transformer", None)


def build_lean(pipeline: Any, features: tuple[FeatureSpec, ...]) -> LeanPath:
    """Compile a fitted PyCaret pipeline into a `LeanPath`.

    Args:
        pipeline: The loaded model (a `pycaret.internal.pipeline.Pipeline`).
        features: The model signature's columns.

    Returns:
        The lean path (not yet verified: see `verify`).

    Raises:
        Unsupported: A step, a column type or an estimator the lean path does not reproduce; the message says which.
    """
    steps = getattr(pipeline, "steps", None)
    if not isinstance(steps, list) or not steps or type(pipeline).__module__ != "pycaret.internal.pipeline":
        raise Unsupported(f"not a PyCaret pipeline ({type(pipeline).__module__}.{type(pipeline).__name__})")
    types = {f.name: f.type for f in features}
    not_float = sorted(name for name, kind in types.items() if kind not in FLOAT_TYPES)
    if not_float:
        raise Unsupported(f"non-float columns {not_float}")
    estimator = steps[-1][1]
    names = getattr(estimator, "feature_names_in_", None)
    if names is None or not hasattr(estimator, "predict"):
        raise Unsupported(f"final estimator {type(estimator).__name__} has no feature names or no predict")
    columns = tuple(str(n) for n in names)
    unknown = sorted(set(columns) - set(types))
    if unknown:
        raise Unsupported(f"the estimator reads columns the signature lacks: {unknown}")
    fills: list[tuple[int, float]] = []
    classes: np.ndarray | None = None
    for name, step in steps[:-1]:
        if step is None or step == "passthrough" or getattr(step, "_train_only", False):
            continue  # skipped at predict time by the pipeline too
        inner = _wrapped(step)
        kind = type(step).__name__
        if kind == "TransformerWrapperWithInverse" and type(inner).__name__ == "LabelEncoder":
            classes = np.asarray(inner.classes_)  # applies to the target only
            continue
        if kind != "TransformerWrapper":
            raise Unsupported(f"step {name!r} ({kind})")
        if getattr(step, "_include", None) is None:
            raise Unsupported(f"step {name!r} works on every column")
        include = list(step._include)
        if not include:
            continue  # a wrapper with no columns to work on (e.g. no categorical columns)
        if type(inner).__name__ != "SimpleImputer" or inner.strategy not in _IMPUTE or inner.add_indicator:
            raise Unsupported(f"step {name!r} ({type(inner).__name__})")
        if [str(c) for c in getattr(inner, "feature_names_in_", include)] != [str(c) for c in include]:
            raise Unsupported(f"step {name!r} sees columns other than it includes")
        for column, value in zip(include, np.asarray(inner.statistics_, dtype=float), strict=True):
            if str(column) not in columns:
                raise Unsupported(f"step {name!r} imputes {column!r}, which the estimator does not read")
            fills.append((columns.index(str(column)), float(value)))
    bare = copy.copy(estimator)
    # The estimator was fitted on a DataFrame; given the same values as an array (in its own column order), it
    # computes the same thing without checking names (and without warning about their absence).
    with_names = bare.__dict__
    with_names.pop("feature_names_in_", None)
    dtypes = {FLOAT_TYPES[types[c]] for c in columns}
    return LeanPath(
        columns=columns,
        fills=tuple(fills),
        estimator=bare,
        classes=classes,
        dtype=dtypes.pop() if len(dtypes) == 1 else "float64",
        estimator_predict=forest_predict(bare) or gaussian_nb_predict(bare),
    )


def reference_sample(
    rows: Sequence[Mapping[str, FeatureValue | None]], features: tuple[FeatureSpec, ...], *, n: int = REFERENCE_ROWS
) -> list[dict[str, FeatureValue | None]]:
    """The example's rows plus `n` rows drawn (fixed seed) over and beyond the example's range of each column.

    Args:
        rows: Checked rows of the logged input example.
        features: The signature's columns.
        n: Rows to draw.
    """
    rng = np.random.default_rng(20240601)
    drawn: list[dict[str, FeatureValue | None]] = [dict(r) for r in rows]
    ranges = {}
    for f in features:
        values = np.array([r[f.name] for r in rows if isinstance(r.get(f.name), int | float)], dtype=float)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        span = max(high - low, abs(high) * 0.5, 1.0)
        ranges[f.name] = (low - span, high + span)
    for _ in range(n):
        drawn.append({name: float(rng.uniform(low, high)) for name, (low, high) in ranges.items()})
    return drawn


def verify(
    lean: LeanPath, own_predict: Callable[[pd.DataFrame], Any], frame: pd.DataFrame, rows: list[dict[str, Any]]
) -> str | None:
    """Compare the lean path with the model's own predict on the same rows.

    Args:
        lean: The compiled path.
        own_predict: The model's own `predict`.
        frame: `rows` as the model's own input (`ServedModel.frame`).
        rows: The checked rows.

    Returns:
        None when every prediction is identical, else what differed.
    """
    expected = [native_label(v) for v in np.asarray(own_predict(frame))]
    got = lean.predict(rows)
    differ = [i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b or type(a) is not type(b)]
    if differ:
        i = differ[0]
        return f"{len(differ)} of {len(rows)} predictions differ (row {i}: {got[i]!r} instead of {expected[i]!r})"
    return None


def with_lean(served: ServedModel, example_rows: list[dict[str, Any]]) -> ServedModel:
    """The served model with a verified lean path, or unchanged with the reason it runs the model's own predict.

    Logs which path each version takes, and why.

    Args:
        served: The loaded version (its own `predict` path).
        example_rows: Its logged input example, as checked rows (may be empty: then there is no proof, no lean path).
    """
    differs = False
    try:
        if not example_rows:
            raise Unsupported("no readable input example to verify against")
        lean = build_lean(served.estimator, served.features)
        rows = reference_sample(example_rows, served.features)
        problem = verify(lean, served.estimator.predict, served.frame(rows), rows)
        if problem is not None:
            differs = True
            raise Unsupported(f"lean path differs from the model's own predict: {problem}")
    except Exception as exc:
        reason = str(exc) if isinstance(exc, Unsupported) else f"{type(exc).__name__}: {exc}"
        # A model the lean path does not cover is served as it always was (info); a lean path that disagrees with
        # the model, or that broke, is worth a look (warning).
        level = logging.WARNING if differs or not isinstance(exc, Unsupported) else logging.INFO
        logger.log(level, "%s runs the model's own predict (no lean path: %s)", served.what, reason)
        return replace(served, lean=None, execution=f"model predict ({reason})"[:300])
    logger.info("%s runs lean: identical on %d reference rows", served.what, len(rows))
    return replace(served, lean=lean, execution=f"lean (identical on {len(rows)} reference rows)")
