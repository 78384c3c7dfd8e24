"""Lean execution: real PyCaret pipelines of every model type the retrain can choose give identical predictions on the
lean path; a pipeline whose lean path differs, or that has a step the lean path does not know, keeps its own predict."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import StandardScaler

from serving.services.models import FeatureSpec, ServedModel
from serving.services.models.lean import forest_predict, gaussian_nb_predict, with_lean
from tests.serving.stubs import FEATURES

MODELS = ("lr", "dt", "rf", "et", "knn", "nb")
"""Every model id the retrain's compare_models may choose (flows/lib/training.py)."""


@pytest.fixture(scope="module")
def experiment(iris, tmp_path_factory):
    # PyCaret opens `logs.log` in the working directory when it is first imported: keep it out of the repository.
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.chdir(tmp_path_factory.mktemp("pycaret"))
        warnings.simplefilter("ignore")
        from pycaret.classification import ClassificationExperiment

        exp = ClassificationExperiment()
        exp.setup(iris, target="species", session_id=7, fold=2, n_jobs=1, verbose=False, html=False, system_log=False)
    return exp


def _served(pipeline) -> ServedModel:
    return ServedModel(
        name="Iris", version="1", features=tuple(FeatureSpec(n, "double") for n in FEATURES), estimator=pipeline
    )


def _rows(frame: pd.DataFrame) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in r.items()} for r in frame[list(FEATURES)].to_dict("records")]


@pytest.mark.parametrize("model_id", MODELS)
def test_the_lean_path_predicts_exactly_what_the_pipeline_does(experiment, iris, model_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = experiment.finalize_model(experiment.create_model(model_id, cross_validation=False, verbose=False))
    served = with_lean(_served(pipeline), _rows(iris.head(3)))
    assert served.lean is not None, served.execution
    assert served.execution.startswith("lean")
    # Rows the verification never saw: the whole data set, jittered, plus values far outside it.
    rng = np.random.default_rng(1)
    sample = iris[list(FEATURES)].to_numpy() + rng.normal(0, 0.3, size=(len(iris), 4))
    sample = np.vstack([sample, rng.uniform(-50, 50, size=(50, 4))])
    frame = pd.DataFrame(sample, columns=list(FEATURES))
    expected = [str(v) for v in pipeline.predict(frame)]
    assert [str(v) for v in served.predict_many(_rows(frame))] == expected
    assert served.predict(_rows(frame.head(1))[0]) == expected[0]
    # Missing values (optional columns) are imputed as the pipeline does, in a batch with complete rows too.
    gaps = frame.head(8).copy()
    for i in range(len(FEATURES)):
        gaps.iloc[i, i] = np.nan
        gaps.iloc[4 + i, [j for j in range(4) if j != i]] = np.nan
    rows = [{k: (None if np.isnan(v) else v) for k, v in row.items()} for row in _rows(gaps)]
    rows += _rows(frame.tail(4))
    expected = [str(v) for v in pipeline.predict(pd.concat([gaps, frame.tail(4)]))]
    assert [str(v) for v in served.predict_many(rows)] == expected


@pytest.mark.parametrize("kind", ["rf", "et"])
def test_forests_skip_joblib_and_predict_the_same_to_the_bit(iris, kind):
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    cls = RandomForestClassifier if kind == "rf" else ExtraTreesClassifier
    x, y = iris[list(FEATURES)].to_numpy(), iris["species"].to_numpy()
    forest = cls(n_estimators=30, n_jobs=1, random_state=3).fit(x, y)
    fast = forest_predict(forest)
    assert fast is not None
    rng = np.random.default_rng(5)
    sample = np.vstack([x + rng.normal(0, 0.4, size=x.shape), rng.uniform(-20, 20, size=(200, 4))])
    assert (fast(sample) == forest.predict(sample)).all()
    # Ties of the averaged probabilities too: the sums are the forest's own, in its order.
    np.testing.assert_array_equal(
        fast(sample[:1]), forest.classes_.take(np.argmax(forest.predict_proba(sample[:1]), axis=1))
    )
    # Not finite: the forest's own predict answers (a random forest routes missing values, extra trees refuse them).
    missing = np.array([[np.nan, 1.0, 1.0, 1.0]])
    if kind == "rf":
        assert (fast(missing) == forest.predict(missing)).all()
    else:
        with pytest.raises(ValueError):
            fast(missing)


def test_gaussian_nb_skips_its_input_checks_and_predicts_the_same_to_the_bit(iris):
    from sklearn.naive_bayes import GaussianNB

    x, y = iris[list(FEATURES)].to_numpy(), iris["species"].to_numpy()
    nb = GaussianNB().fit(x, y)
    fast = gaussian_nb_predict(nb)
    assert fast is not None
    rng = np.random.default_rng(7)
    sample = np.vstack([x + rng.normal(0, 0.4, size=x.shape), rng.uniform(-20, 20, size=(200, 4))])
    np.testing.assert_array_equal(fast(sample), nb.predict(sample))
    np.testing.assert_array_equal(fast(sample.astype(np.float32)), nb.predict(sample.astype(np.float32)))
    # Input it was not made for goes to the estimator's own predict, which refuses it as before.
    for bad in (np.array([[np.nan, 1.0, 1.0, 1.0]]), np.ones((1, 3)), np.ones(4)):
        with pytest.raises(ValueError):
            fast(bad)
    assert forest_predict(nb) is None


def test_only_known_forests_get_a_fast_predict(iris):
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.naive_bayes import GaussianNB

    x, y = iris[list(FEATURES)], iris["species"]
    assert forest_predict(GaussianNB().fit(x, y)) is None
    assert gaussian_nb_predict(ExtraTreesClassifier(n_estimators=3).fit(x, y)) is None


class SeesFrames(BaseEstimator, ClassifierMixin):
    """Predicts differently for a DataFrame and a bare array: a lean path would change its answers."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray(X.columns)
        return self

    def predict(self, X):
        return np.full(len(X), "setosa" if isinstance(X, pd.DataFrame) else "virginica")


def test_a_pipeline_whose_lean_path_differs_keeps_its_own_predict(iris, caplog):
    from pycaret.internal.pipeline import Pipeline

    pipeline = Pipeline([("actual_estimator", SeesFrames())]).fit(iris[list(FEATURES)], iris["species"])
    served = with_lean(_served(pipeline), _rows(iris.head(3)))
    assert served.lean is None
    assert "differs" in served.execution and "predictions differ" in served.execution
    assert served.predict(_rows(iris.head(1))[0]) == "setosa"  # the model's own answer
    assert "runs the model's own predict" in caplog.text


def test_an_unknown_step_keeps_its_own_predict(iris):
    from pycaret.internal.pipeline import Pipeline
    from pycaret.internal.preprocess.transformers import TransformerWrapper
    from sklearn.naive_bayes import GaussianNB

    scaler = TransformerWrapper(StandardScaler(), include=list(FEATURES))
    pipeline = Pipeline([("normalize", scaler), ("actual_estimator", GaussianNB())])
    pipeline.fit(iris[list(FEATURES)], iris["species"])
    served = with_lean(_served(pipeline), _rows(iris.head(3)))
    assert served.lean is None
    assert "'normalize'" in served.execution and "StandardScaler" in served.execution


def test_a_model_that_is_not_a_pycaret_pipeline_keeps_its_own_predict(iris):
    from sklearn.naive_bayes import GaussianNB

    served = with_lean(_served(GaussianNB().fit(iris[list(FEATURES)], iris["species"])), _rows(iris.head(3)))
    assert served.lean is None and "not a PyCaret pipeline" in served.execution


async def test_health_says_which_path_each_arm_runs(client):
    health = (await client.get("/health")).json()
    assert set(health["execution"]) == {"champion", "challenger"}
    assert health["execution"]["champion"].startswith("model predict")
