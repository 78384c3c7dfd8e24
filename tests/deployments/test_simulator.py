"""Drift scenarios of the traffic simulator."""

import numpy as np
import pandas as pd
import pytest

from deployments.simulator import apply_drift, sample_rows

REFERENCE = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 20.0, 30.0, 40.0], "y": ["p", "q", "p", "q"]})


def test_scale_multiplies_only_the_named_columns():
    out = apply_drift(REFERENCE, scenario="scale", columns=["a"], factor=2.0, reference=REFERENCE)
    pd.testing.assert_frame_equal(out, REFERENCE.assign(a=[2.0, 4.0, 6.0, 8.0]))


def test_shift_adds_reference_standard_deviations():
    out = apply_drift(REFERENCE, scenario="shift", columns=["b"], factor=1.0, reference=REFERENCE)
    pd.testing.assert_series_equal(out["b"], REFERENCE["b"] + REFERENCE["b"].std())


def test_none_changes_nothing():
    pd.testing.assert_frame_equal(
        apply_drift(REFERENCE, scenario="none", columns=["a"], factor=9, reference=REFERENCE), REFERENCE
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scenario": "melt", "columns": ["a"]}, "unknown drift scenario 'melt'"),
        ({"scenario": "scale", "columns": ["zz"]}, "drift columns not in the data: zz"),
    ],
)
def test_bad_scenarios_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_drift(REFERENCE, factor=2, reference=REFERENCE, **kwargs)


def test_samples_keep_labels_and_jitter_features():
    rows = sample_rows(REFERENCE, 200, np.random.default_rng(0), target="y")
    assert list(rows.columns) == ["a", "b", "y"]
    assert set(rows["y"]) <= {"p", "q"}
    assert rows["a"].nunique() == 200
