"""Streamed reading of the router's inference log: each page becomes a compact frame or a few counts at once.

The flows walk a window of the log a page at a time (`RouterClient.pages`) and never build a list of all its records:

- **Drift** (`read_drift_window`): each page's features become a frame that feeds the data-quality tally (counts per
  column over every row) and a seeded reservoir sample of at most the check's sample size (`Reservoir`); what the
  champion served and the labels become class counts. Memory is bounded by one page plus the sample, whatever the
  window's size. A window no larger than the sample is kept whole, in log order, so the check sees exactly the frame a
  list of all records would have made.
- **Retrain** (`read_traffic_rows`): it trains on every row up to its caps, so each page becomes its training rows
  (`flows.lib.window.traffic_rows`) at once, and the frames are joined: memory is bounded by the cap in columnar form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from contracts.api import InferenceRecord
from flows.lib.data_quality import QualityReport, QualityTally


def features_frame(page: Sequence[InferenceRecord]) -> pd.DataFrame:
    """The features of a page of records, every key any of them had (absent and extra keys stay visible)."""
    return pd.DataFrame.from_records([r.features for r in page])


class Reservoir:
    """A seeded uniform random sample of at most `size` rows of a stream of frames (reservoir sampling).

    Algorithm R: the first `size` rows are kept; row `i` (0-based) after them replaces a random kept row with
    probability `size / (i + 1)`, so every row of the stream is equally likely to be in the sample. The draws come from
    numpy's `Generator` seeded with `seed`, a chunk at a time: the same frames in the same order give the same sample.
    Below `size` rows the sample is every row, in stream order (`pd.concat` of the frames).
    """

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.seed = size, seed
        self.seen = 0
        """Rows offered so far."""
        self._rng = np.random.default_rng(seed)
        self._kept: pd.DataFrame | None = None

    @property
    def sample(self) -> pd.DataFrame:
        """The rows kept (an empty frame before any row)."""
        return self._kept if self._kept is not None else pd.DataFrame()

    def add(self, chunk: pd.DataFrame) -> None:
        """Offer the rows of a chunk to the sample."""
        chunk = chunk.reset_index(drop=True)
        if not len(chunk):
            return
        held = 0 if self._kept is None else len(self._kept)
        room = min(self.size - held, len(chunk))
        if room > 0 or self._kept is None:
            parts = [chunk.iloc[:room]] if self._kept is None else [self._kept, chunk.iloc[:room]]
            self._kept = pd.concat(parts, ignore_index=True)
        rest = np.arange(max(room, 0), len(chunk))
        if len(rest):
            # Row i of the stream (0-based) takes slot j, drawn uniformly in [0, i], when j < size.
            draws = self._rng.integers(0, self.seen + rest + 1)
            hit = draws < self.size
            slots, rows = draws[hit], rest[hit]
            if len(slots):
                # Two rows of one chunk drawn into one slot: the later row wins, as one at a time would have it.
                _, last = np.unique(slots[::-1], return_index=True)
                keep = np.sort(len(slots) - 1 - last)
                slots, rows = slots[keep], rows[keep]
                combined = pd.concat([self._kept, chunk.iloc[rows]], ignore_index=True)
                order = np.arange(self.size)
                order[slots] = self.size + np.arange(len(rows))
                self._kept = combined.take(order).reset_index(drop=True)
        self.seen += len(chunk)


@dataclass
class ServedCounts:
    """What the champion served in a window and how it fared on the labelled rows, as counts (no rows)."""

    predictions: dict[str, int] = field(default_factory=dict)
    """Requests the champion served, per predicted class (classes in order of first appearance)."""
    labels: dict[str, int] = field(default_factory=dict)
    """Labelled requests the champion served, per label."""
    labelled: int = 0
    correct: int = 0
    """Labelled requests whose prediction equals the label (compared as text)."""

    def add(self, page: Sequence[InferenceRecord], champion_version: str) -> None:
        """Count a page's requests served by `champion_version`."""
        for r in page:
            if r.model_version != champion_version:
                continue
            prediction = str(r.prediction)
            self.predictions[prediction] = self.predictions.get(prediction, 0) + 1
            if r.label is not None:
                label = str(r.label)
                self.labels[label] = self.labels.get(label, 0) + 1
                self.labelled += 1
                self.correct += label == prediction

    @property
    def served(self) -> int:
        return sum(self.predictions.values())


@dataclass
class DriftWindow:
    """A drift window read page by page: its size and time span, quality over every row, a bounded feature sample."""

    rows: int
    """Requests read (the whole window)."""
    first_ts: datetime | None
    last_ts: datetime | None
    pages: int
    quality: QualityReport
    """Data quality over every row of the window."""
    sample: pd.DataFrame
    """The features of every row when the window holds at most `sample_size` rows, else a seeded uniform sample."""
    sample_size: int
    sample_seed: int
    served: ServedCounts
    peak_rows: int = 0
    """The most rows held at once while reading (the kept sample plus the page being read)."""

    @property
    def sampled(self) -> bool:
        """Whether the sample is smaller than the window."""
        return len(self.sample) < self.rows


def read_drift_window(
    pages: Iterable[Sequence[InferenceRecord]],
    *,
    quality: QualityTally,
    champion_version: str,
    sample_size: int,
    seed: int,
) -> DriftWindow:
    """Fold the pages of a drift window into its quality tally, a bounded feature sample and the served counts.

    Args:
        pages: Pages of records, newest first, as `RouterClient.pages` yields them.
        quality: A fresh tally against the champion's reference (every row is added to it).
        champion_version: The version whose predictions and labels are counted.
        sample_size: At most this many rows of features are kept (the check's sample size).
        seed: Seed of the sample.

    Returns:
        The window; at most one page and the sample were held at any time.
    """
    reservoir = Reservoir(sample_size, seed)
    served = ServedCounts()
    first_ts = last_ts = None
    n_pages = peak = 0
    for page in pages:
        if not page:
            continue
        n_pages += 1
        chunk = features_frame(page)
        peak = max(peak, len(reservoir.sample) + len(chunk))
        quality.add(chunk)
        reservoir.add(chunk)
        served.add(page, champion_version)
        times = [r.ts for r in page]
        first_ts = min([*times, first_ts] if first_ts else times)
        last_ts = max([*times, last_ts] if last_ts else times)
        del chunk, page
    return DriftWindow(
        rows=reservoir.seen,
        first_ts=first_ts,
        last_ts=last_ts,
        pages=n_pages,
        quality=quality.report(),
        sample=reservoir.sample,
        sample_size=sample_size,
        sample_seed=seed,
        served=served,
        peak_rows=peak,
    )


def read_traffic_rows(pages: Iterable[Sequence[InferenceRecord]], like: pd.DataFrame, target: str) -> pd.DataFrame:
    """The labelled requests of the pages as training rows (`flows.lib.window.traffic_rows`), built a page at a time.

    Args:
        pages: Pages of records, newest first.
        like: Features and target whose columns and dtypes the rows get.
        target: Name of the target column.

    Returns:
        The rows `traffic_rows` makes of all the pages' records at once, without holding those records.
    """
    from flows.lib.window import traffic_rows

    frames = [traffic_rows(page, like, target) for page in pages if page]
    frames = [f for f in frames if len(f)]
    if not frames:
        return traffic_rows([], like, target)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
