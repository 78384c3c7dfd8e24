"""The retrain's data window: which rows a candidate learns from, and which recent rows judge it against the champion.

The policy, step by step (every number is a setting, gathered in `WindowPolicy`):

1. **Recent traffic**: the labelled requests logged in the last `days` days (the router hands over at most
   `retrain_max_labelled` of the newest; see `flows/settings.py`).
2. **Holdout**: among the recent requests the champion was not trained on, a seeded random `holdout_share` of them
   (at least `min_holdout_rows` while there are that many) is set aside. Neither model trains on it; the gate scores
   both on it.
3. **History**: a seeded random `history_share` of the original training data (the rows the first version was
   trained on, kept with its MLflow run), so the original data is never forgotten, however many loops have run.
4. **Training**: the history sample plus every recent request that is not in the holdout. When that is more than
   `max_rows`, both sources are cut in proportion to their sizes: the history keeps the first rows of its seeded
   sample, the traffic its newest rows.

Every row carries an id (`contracts.registry.ROW_ID`: `original:<index>` or the request id), its source and its
log time, so what a version was trained on can be checked row by row later, and the window is recorded with the run
(`WindowRecord`: rows per source, time bounds, content hashes).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import pandas as pd

from contracts.api import InferenceRecord
from contracts.registry import ROW_COLUMNS, ROW_ID, ROW_SOURCE, ROW_TS
from flows.lib.data import align_features, align_target, records_to_frame

ORIGINAL = "original"
"""`ROW_SOURCE` of a row of the original training data."""
TRAFFIC = "traffic"
"""`ROW_SOURCE` of a labelled request from the router's inference log."""


@dataclass(frozen=True)
class WindowPolicy:
    """The numbers of the window policy (see the module docstring for what each does)."""

    days: float
    """Labelled traffic of the last this many days is used."""
    history_share: float
    """Share of the original training data every retrain keeps (a seeded sample)."""
    max_rows: int
    """At most this many training rows."""
    holdout_share: float
    """Share of the recent rows unseen by the champion that the gate holds out."""
    min_holdout_rows: int
    """The holdout takes at least this many rows while there are that many."""
    seed: int
    """Seed of the history sample and the holdout draw."""


@dataclass(frozen=True)
class SourceRecord:
    """How many rows a source offered and how many were used, with their time bounds (ISO, UTC)."""

    available: int
    rows: int
    first_ts: str | None = None
    last_ts: str | None = None


@dataclass(frozen=True)
class WindowRecord:
    """What the window held and why: logged with the run (`window.json`) and shown in the Prefect artifact."""

    policy: WindowPolicy
    now: str
    """When the window was cut (UTC)."""
    since: str
    """Start of the traffic window: `now` minus `policy.days`."""
    history: SourceRecord
    """Original training rows: available (all of them) and used (the sample, after the cap)."""
    history_run_id: str
    """The MLflow run that holds the original training rows."""
    traffic: SourceRecord
    """Labelled requests in the window (available) and those trained on (rows)."""
    traffic_seen_by_champion: int
    """Requests of the window the champion was trained on: never in the holdout."""
    holdout: SourceRecord
    """The gate's holdout: available = requests of the window the champion never saw."""
    capped: bool
    """Whether `policy.max_rows` cut the training rows."""
    training_rows: int
    training_hash: str
    """sha256 of the training rows (features, target and row ids, in training order)."""
    holdout_hash: str
    note: str = ""
    """Anything unusual (for example a champion without a training record)."""

    def as_dict(self) -> dict:
        """The record as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class History:
    """The original training rows and what the champion was trained on."""

    rows: pd.DataFrame
    """The original training data, with the row columns."""
    run_id: str
    """The MLflow run that holds it."""
    seen_ids: frozenset[str]
    """Row ids the champion was trained on."""
    seen_until: datetime | None = None
    """For a champion without a training record: requests logged up to then may have been in its training data."""
    note: str = ""


@dataclass(frozen=True)
class TrainingWindow:
    """The rows of one retrain: training, holdout and the recent traffic they came from, with the record."""

    training: pd.DataFrame
    """Training rows with the row columns (history first, then traffic newest first)."""
    holdout: pd.DataFrame
    """The gate's holdout rows with the row columns (newest first)."""
    recent: pd.DataFrame
    """Every labelled request of the window (newest first), features and target only."""
    record: WindowRecord

    @property
    def training_data(self) -> pd.DataFrame:
        """The training rows as the trainer takes them: features and target only."""
        return without_row_columns(self.training)

    @property
    def holdout_data(self) -> pd.DataFrame:
        """The holdout rows as the models take them: features and target only."""
        return without_row_columns(self.holdout)

    @property
    def traffic_rows(self) -> int:
        """Training rows that came from traffic."""
        return int((self.training[ROW_SOURCE] == TRAFFIC).sum())


def without_row_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without the row id, source and time columns."""
    return frame.drop(columns=[c for c in ROW_COLUMNS if c in frame.columns]).reset_index(drop=True)


def original_rows(data: pd.DataFrame, *, prefix: str = ORIGINAL) -> pd.DataFrame:
    """Original training data with the row columns: ids `<prefix>:<position>`, no log time.

    Args:
        data: Features and target, in their stored order (ids follow it).
        prefix: Id prefix.

    Returns:
        A copy with `ROW_ID`, `ROW_SOURCE` (`original`) and an empty `ROW_TS`.
    """
    out = data.reset_index(drop=True).copy()
    out[ROW_ID] = [f"{prefix}:{i}" for i in range(len(out))]
    out[ROW_SOURCE] = ORIGINAL
    out[ROW_TS] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")
    return out


def traffic_rows(records: Sequence[InferenceRecord], like: pd.DataFrame, target: str) -> pd.DataFrame:
    """The labelled requests among `records` as training rows shaped like `like` (the original data).

    Args:
        records: Logged requests (unlabelled ones are left out).
        like: Features and target whose columns and dtypes the rows get (row columns in it are ignored).
        target: Name of the target column.

    Returns:
        One row per labelled request, in the order given, with `ROW_ID` (the request id), `ROW_SOURCE`
        (`traffic`) and `ROW_TS` (its log time, UTC).
    """
    like = without_row_columns(like)
    labelled = [r for r in records if r.label is not None]
    features = [c for c in like.columns if c != target]
    frame = records_to_frame(labelled, features, target)
    if len(frame):
        frame = align_features(frame, like)
        frame[target] = align_target(frame[target], like=like[target])
    frame[ROW_ID] = pd.Series([r.request_id for r in labelled], dtype=object)
    frame[ROW_SOURCE] = TRAFFIC
    frame[ROW_TS] = pd.Series(pd.to_datetime([r.ts for r in labelled], utc=True), dtype="datetime64[ns, UTC]")
    return frame


def cap_rows(history: int, traffic: int, max_rows: int) -> tuple[int, int]:
    """Rows kept of each source under the cap: both cut in proportion to their sizes when over it.

    Args:
        history: History rows available.
        traffic: Traffic rows available.
        max_rows: The cap.

    Returns:
        (history rows kept, traffic rows kept); their sum is `min(history + traffic, max_rows)`.
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    total = history + traffic
    if total <= max_rows:
        return history, traffic
    kept_history = math.floor(max_rows * history / total)
    return kept_history, max_rows - kept_history


def holdout_size(unseen: int, *, share: float, min_rows: int) -> int:
    """Rows the gate holds out of `unseen` recent rows: `share` of them, at least `min_rows` while there are enough."""
    return min(unseen, max(min_rows, math.ceil(share * unseen)))


def select_window(
    history: History, traffic: pd.DataFrame, *, policy: WindowPolicy, now: datetime, target: str
) -> TrainingWindow:
    """Cut the training rows and the gate's holdout by the window policy (see the module docstring).

    Args:
        history: The original training rows and what the champion was trained on.
        traffic: Labelled requests with the row columns (`traffic_rows`), in any order.
        policy: The policy's numbers.
        now: The end of the window (aware, UTC).
        target: Name of the target column.

    Returns:
        The training rows, the holdout, the recent traffic and the record of it all.
    """
    if not 0.0 <= policy.history_share <= 1.0 or not 0.0 <= policy.holdout_share < 1.0:
        raise ValueError(f"shares must be in [0, 1] (holdout below 1): {policy}")
    since = now - timedelta(days=policy.days)
    newest_first = [ROW_TS, ROW_ID]
    in_window = traffic[(traffic[ROW_TS] >= since) & (traffic[ROW_TS] <= now)]
    in_window = in_window.sort_values(newest_first, ascending=False).reset_index(drop=True)

    seen = in_window[ROW_ID].isin(history.seen_ids)
    if history.seen_until is not None:
        seen |= in_window[ROW_TS] <= history.seen_until
    unseen = in_window[~seen]
    n_holdout = holdout_size(len(unseen), share=policy.holdout_share, min_rows=policy.min_holdout_rows)
    holdout = unseen.sample(n=n_holdout, random_state=policy.seed) if n_holdout else unseen.head(0)
    holdout = holdout.sort_values(newest_first, ascending=False).reset_index(drop=True)
    trainable = in_window[~in_window[ROW_ID].isin(holdout[ROW_ID])]

    n_history = round(policy.history_share * len(history.rows))
    sample = history.rows.sample(n=n_history, random_state=policy.seed) if n_history else history.rows.head(0)
    kept_history, kept_traffic = cap_rows(len(sample), len(trainable), policy.max_rows)
    used_history, used_traffic = sample.head(kept_history), trainable.head(kept_traffic)
    training = pd.concat([used_history, used_traffic], ignore_index=True)

    record = WindowRecord(
        policy=policy,
        now=now.isoformat(),
        since=since.isoformat(),
        history=SourceRecord(available=len(history.rows), rows=len(used_history)),
        history_run_id=history.run_id,
        traffic=SourceRecord(available=len(in_window), rows=len(used_traffic), **_bounds(used_traffic)),
        traffic_seen_by_champion=int(seen.sum()),
        holdout=SourceRecord(available=len(unseen), rows=len(holdout), **_bounds(holdout)),
        capped=len(used_history) + len(used_traffic) < len(sample) + len(trainable),
        training_rows=len(training),
        training_hash=content_hash(training, target),
        holdout_hash=content_hash(holdout, target),
        note=history.note,
    )
    recent = without_row_columns(in_window)
    return TrainingWindow(training=training, holdout=holdout, recent=recent, record=record)


def _bounds(rows: pd.DataFrame) -> dict[str, str | None]:
    """The first and last log time of some rows (ISO), or None when they have none."""
    times = rows[ROW_TS].dropna()
    if times.empty:
        return {"first_ts": None, "last_ts": None}
    return {"first_ts": times.min().isoformat(), "last_ts": times.max().isoformat()}


def content_hash(rows: pd.DataFrame, target: str) -> str:
    """sha256 of rows' features, target and ids, in order (the log time and source are left out: the id fixes them).

    Args:
        rows: Rows with the row columns.
        target: Name of the target column.

    Returns:
        The hex digest; equal frames give equal digests, and so does the same data read back from parquet.
    """
    columns = [c for c in rows.columns if c not in ROW_COLUMNS or c == ROW_ID]
    digest = hashlib.sha256(",".join(map(str, columns)).encode())
    frame = rows[columns].reset_index(drop=True)
    # Labels as text: a categorical, an object or a string column with the same labels hash alike.
    frame = frame.assign(**{target: frame[target].astype(str)}) if target in frame.columns else frame
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def seen_rows(training: pd.DataFrame | None) -> frozenset[str]:
    """The row ids of a version's training record (empty when it has none)."""
    if training is None or ROW_ID not in training.columns:
        return frozenset()
    return frozenset(training[ROW_ID].astype(str))


def shortfall(window: TrainingWindow, *, min_traffic: int, min_holdout: int) -> str | None:
    """Why a window is too thin to retrain on and judge fairly, or None when it is enough.

    Args:
        window: The cut window.
        min_traffic: Labelled requests a candidate must train on (outside the holdout).
        min_holdout: Rows the gate needs, unseen by both models.

    Returns:
        The reason, naming the counts, or None.
    """
    record = window.record
    if record.holdout.rows < min_holdout:
        return (
            f"{record.holdout.rows} labelled requests of the last {record.policy.days:g} days the champion never saw "
            f"(need {min_holdout} for the gate's holdout)"
        )
    if window.traffic_rows < min_traffic:
        return (
            f"{window.traffic_rows} labelled requests to train on outside the holdout (need {min_traffic}; "
            f"{record.traffic.available} in the last {record.policy.days:g} days)"
        )
    return None
