"""The training window policy selects exactly the rows it documents, and the gate's holdout is unseen by both models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from contracts.api import InferenceRecord
from contracts.registry import ROW_ID, ROW_SOURCE, ROW_TS
from flows.lib.window import (
    ORIGINAL,
    TRAFFIC,
    History,
    WindowPolicy,
    cap_rows,
    content_hash,
    holdout_size,
    original_rows,
    select_window,
    shortfall,
    traffic_rows,
)

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
TARGET = "species"


def record(i: int, hours_ago: float, *, label: str | None = "setosa") -> InferenceRecord:
    return InferenceRecord(
        request_id=f"r{i:02d}",
        ts=NOW - timedelta(hours=hours_ago),
        user_id=f"u{i}",
        arm="champion",
        model_version="1",
        experiment_id="v1",
        features={"sepal_length": 5.0 + i / 100, "sepal_width": 3.0, "petal_length": 1.4, "petal_width": 0.2},
        prediction="setosa",
        label=label,
        latency_ms=1.0,
    )


@pytest.fixture
def original(iris: pd.DataFrame) -> pd.DataFrame:
    return original_rows(iris.head(10))


@pytest.fixture
def traffic(original: pd.DataFrame) -> pd.DataFrame:
    """30 labelled requests an hour apart (r00 now ... r29 29 h ago), one unlabelled, one logged after `NOW`."""
    records = [record(i, hours_ago=i) for i in range(30)]
    records += [record(30, hours_ago=0.5, label=None), record(31, hours_ago=-0.1)]
    return traffic_rows(records, original, TARGET)


def policy(**changes) -> WindowPolicy:
    values = {"days": 1.0, "history_share": 0.5, "max_rows": 1000, "holdout_share": 0.25, "min_holdout_rows": 3}
    return WindowPolicy(**(values | {"seed": 7} | changes))


def ids(frame: pd.DataFrame, source: str | None = None) -> set[str]:
    rows = frame if source is None else frame[frame[ROW_SOURCE] == source]
    return set(rows[ROW_ID])


def test_traffic_rows_keep_labelled_requests_with_their_id_time_and_the_reference_dtypes(traffic, original):
    assert len(traffic) == 31 and "r30" not in set(traffic[ROW_ID])
    first = traffic.iloc[0]
    assert (first[ROW_ID], first[ROW_SOURCE], first[ROW_TS]) == ("r00", TRAFFIC, pd.Timestamp(NOW))
    assert traffic.dtypes.drop([ROW_ID, ROW_SOURCE]).equals(original.dtypes.drop([ROW_ID, ROW_SOURCE]))


def test_the_window_holds_exactly_the_rows_the_policy_documents(traffic, original):
    seen = frozenset({"r00", "r01", "r02", "r03", "r04", "r27"})  # r27 is out of the window anyway
    window = select_window(History(original, "run-0", seen_ids=seen), traffic, policy=policy(), now=NOW, target=TARGET)

    # Labelled requests logged from NOW - 1 day to NOW: r00 (0 h) to r24 (24 h, on the bound); not r31 (future).
    in_window = {f"r{i:02d}" for i in range(25)}
    unseen = in_window - seen
    holdout = ids(window.holdout)
    assert holdout <= unseen and len(holdout) == holdout_size(20, share=0.25, min_rows=3) == 5
    assert ids(window.training, TRAFFIC) == in_window - holdout
    assert ids(window.training, ORIGINAL) <= ids(original) and len(ids(window.training, ORIGINAL)) == 5
    assert len(window.recent) == 25 and list(window.training_data.columns) == list(traffic.columns[:5])

    record = window.record
    assert (record.traffic.available, record.traffic.rows, record.traffic_seen_by_champion) == (25, 20, 5)
    assert (record.holdout.available, record.holdout.rows) == (20, 5)
    assert (record.history.available, record.history.rows, record.training_rows) == (10, 5, 25)
    used = window.training[window.training[ROW_SOURCE] == TRAFFIC][ROW_TS]
    assert (record.traffic.first_ts, record.traffic.last_ts) == (used.min().isoformat(), used.max().isoformat())
    assert record.since == (NOW - timedelta(days=1)).isoformat() and not record.capped
    assert record.training_hash == content_hash(window.training, TARGET)


def test_the_holdout_shares_no_row_with_either_models_training_data(traffic, original):
    champion_training = pd.concat([original, traffic[traffic[ROW_ID].isin(["r01", "r05", "r09", "r13"])]])
    history = History(original, "run-0", seen_ids=frozenset(champion_training[ROW_ID]))
    for seed in range(20):
        window = select_window(history, traffic, policy=policy(seed=seed), now=NOW, target=TARGET)
        holdout = ids(window.holdout)
        assert holdout and not holdout & ids(champion_training)
        assert not holdout & ids(window.training)


def test_the_same_seed_cuts_the_same_window(traffic, original):
    history = History(original, "run-0", seen_ids=frozenset())
    cut = [select_window(history, traffic, policy=policy(), now=NOW, target=TARGET) for _ in range(2)]
    pd.testing.assert_frame_equal(cut[0].training, cut[1].training)
    assert cut[0].record == cut[1].record


def test_over_the_cap_both_sources_shrink_in_proportion_and_traffic_keeps_its_newest_rows(traffic, original):
    history = History(original, "run-0", seen_ids=frozenset())
    full = select_window(history, traffic, policy=policy(), now=NOW, target=TARGET)
    capped = select_window(history, traffic, policy=policy(max_rows=10), now=NOW, target=TARGET)

    # 5 history + 18 trainable requests (25 in the window, 7 held out) over a cap of 10: 2 + 8.
    assert (full.record.history.rows, full.record.traffic.rows, full.record.holdout.rows) == (5, 18, 7)
    assert cap_rows(5, 18, 10) == (2, 8)
    trainable = full.training[full.training[ROW_SOURCE] == TRAFFIC].sort_values(ROW_TS, ascending=False)
    assert ids(capped.training, TRAFFIC) == set(trainable[ROW_ID].head(8))
    kept_history = capped.training[capped.training[ROW_SOURCE] == ORIGINAL][ROW_ID]
    assert list(kept_history) == list(full.training[full.training[ROW_SOURCE] == ORIGINAL][ROW_ID].head(2))
    assert capped.record.capped and capped.record.training_rows == 10
    assert ids(capped.holdout) == ids(full.holdout)  # the cap never moves rows into the holdout


@pytest.mark.parametrize(
    "history,traffic,cap,expected",
    [(5, 19, 100, (5, 19)), (5, 19, 24, (5, 19)), (50, 50, 10, (5, 5)), (1, 99, 10, (0, 10)), (0, 0, 0, (0, 0))],
)
def test_cap_rows(history, traffic, cap, expected):
    assert cap_rows(history, traffic, cap) == expected


def test_without_a_training_record_requests_before_the_champion_count_as_seen(traffic, original):
    registered = NOW - timedelta(hours=10, minutes=30)
    history = History(original, "run-0", seen_ids=frozenset(), seen_until=registered)
    window = select_window(history, traffic, policy=policy(), now=NOW, target=TARGET)

    assert ids(window.holdout) <= {f"r{i:02d}" for i in range(11)}  # logged after the champion: r00 (0 h) to r10
    assert window.record.traffic_seen_by_champion == 14  # r11 (11 h) to r24 (24 h)


def test_a_window_too_thin_for_the_gate_or_training_says_why(traffic, original):
    history = History(original, "run-0", seen_ids=frozenset())
    window = select_window(history, traffic, policy=policy(days=0.1), now=NOW, target=TARGET)  # r00 to r02

    assert window.record.holdout.rows == 3  # the minimum takes all three
    assert shortfall(window, min_traffic=1, min_holdout=3) == (
        "0 labelled requests to train on outside the holdout (need 1; 3 in the last 0.1 days)"
    )
    assert "need 5 for the gate's holdout" in shortfall(window, min_traffic=1, min_holdout=5)
    enough = select_window(history, traffic, policy=policy(), now=NOW, target=TARGET)
    assert shortfall(enough, min_traffic=5, min_holdout=3) is None


def test_the_content_hash_survives_parquet_and_changes_with_a_label(traffic, tmp_path: Path):
    path = tmp_path / "rows.parquet"
    traffic.to_parquet(path, index=False)
    again = pd.read_parquet(path)

    assert content_hash(again, TARGET) == content_hash(traffic, TARGET)
    changed = traffic.copy()
    changed.loc[3, TARGET] = "virginica"
    assert content_hash(changed, TARGET) != content_hash(traffic, TARGET)
