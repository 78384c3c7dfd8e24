"""Reading a window a page at a time holds one page and the sample, never the window, and finds what the whole
frame finds."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import numpy as np
import pandas as pd
import pytest

from contracts.api import ROUTE_INFERENCES, InferencePage, InferenceRecord
from flows.lib.data_quality import QualityTally, check_quality
from flows.lib.drift_calibration import calibrate_version
from flows.lib.drift_check import CheckConfig, class_counts, quality_tally, run_check, run_window_check
from flows.lib.router import RouterClient
from flows.lib.window import original_rows, traffic_rows
from flows.lib.window_reader import Reservoir, features_frame, read_drift_window, read_traffic_rows

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
KINDS = {"x": "numerical", "y": "numerical", "kind": "categorical"}


def record(i: int, features: dict, *, version: str = "1", prediction: str = "a", label: str | None = None):
    return InferenceRecord(
        request_id=f"r{i:07d}",
        ts=NOW - timedelta(seconds=i),
        user_id=f"u{i % 97}",
        arm="champion",
        model_version=version,
        experiment_id="v1",
        features=features,
        prediction=prediction,
        label=label,
        latency_ms=1.0,
    )


def pages_of(records: list[InferenceRecord], size: int) -> list[list[InferenceRecord]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=2000),
            "y": rng.normal(size=2000),
            "kind": rng.choice(["a", "b", "c"], 2000),
            "t": rng.choice(["a", "b"], 2000),
        }
    )


def messy_records(n: int, seed: int) -> list[InferenceRecord]:
    """Requests with every oddity the quality check looks for: missing keys, text in a number, new categories,
    an extra key, and outcomes served by two versions, some labelled."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        features: dict = {"x": float(rng.normal(1.5 if i % 3 else 0.0)), "kind": str(rng.choice(["a", "b", "c", "z"]))}
        if i % 7:
            features["y"] = float(rng.normal())
        if i % 11 == 0:
            features["extra"] = i
        if i % 13 == 0:
            features["kind"] = f"new-{i % 5}"
        if i % 17 == 0:
            features["x"] = "oops"
        prediction, label = str(rng.choice(["a", "b", "c"])), None
        if i % 2:
            label = str(rng.choice(["a", "b"]))
        out.append(record(i, features, version="1" if i % 5 else "2", prediction=prediction, label=label))
    return out


def test_below_its_size_the_sample_is_the_whole_window_in_order_as_one_frame_of_all_records() -> None:
    records = messy_records(230, seed=1)
    reservoir = Reservoir(size=1000, seed=3)
    for page in pages_of(records, 40):
        reservoir.add(features_frame(page))
    pd.testing.assert_frame_equal(reservoir.sample, pd.DataFrame.from_records([r.features for r in records]))
    assert reservoir.seen == 230


def test_the_sample_is_the_same_for_a_seed_and_page_order_and_uniform_over_the_window() -> None:
    def sample(seed: int, page: int) -> pd.DataFrame:
        reservoir = Reservoir(size=500, seed=seed)
        for start in range(0, 20_000, page):
            reservoir.add(pd.DataFrame({"i": np.arange(start, min(start + page, 20_000))}))
        return reservoir.sample

    first, again = sample(7, 300), sample(7, 300)
    pd.testing.assert_frame_equal(first, again)
    assert len(first) == 500 and first["i"].is_unique
    assert not sample(8, 300)["i"].equals(first["i"])
    # Uniform: each tenth of the window holds about a tenth of the sample (binomial sd about 6.7 of 50).
    tenths = np.bincount(first["i"] // 2000, minlength=10)
    assert tenths.min() >= 25 and tenths.max() <= 75, tenths


def test_a_chunk_equals_its_rows_one_at_a_time() -> None:
    """Drawing for a whole chunk at once keeps the later of two rows drawn into one slot, as Algorithm R would."""
    chunked = Reservoir(size=50, seed=5)
    chunked.add(pd.DataFrame({"i": np.arange(2000)}))
    # Algorithm R by hand with the same draws: the first 50 rows, then row i takes slot j = draw in [0, i].
    rng = np.random.default_rng(5)
    slots = list(range(50))
    draws = rng.integers(0, np.arange(50, 2000) + 1)
    for i, j in zip(range(50, 2000), draws, strict=True):
        if j < 50:
            slots[j] = i
    assert chunked.sample["i"].tolist() == slots


def test_quality_added_up_page_by_page_is_the_quality_of_the_whole_frame(reference: pd.DataFrame) -> None:
    records = messy_records(3000, seed=2)
    whole = check_quality(reference, features_frame(records), ["x", "y", "kind"], KINDS)
    tally = QualityTally(reference, ["x", "y", "kind"], KINDS)
    for page in pages_of(records, 250):
        tally.add(features_frame(page))
    assert tally.report().as_dict() == whole.as_dict()
    assert whole.flagged() and whole.extra_columns == ["extra"] and not whole.valid  # the oddities are found


def test_class_counts_added_up_order_classes_as_value_counts_does() -> None:
    values = pd.Series(list("abcabcddeaafgg") + ["h"] * 2)
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    pd.testing.assert_series_equal(class_counts(counts), values.value_counts(), check_names=False)


@pytest.fixture(scope="module")
def calibrated(reference: pd.DataFrame):
    return calibrate_version(
        reference,
        target="t",
        predictions=reference["t"],
        holdout_accuracy=0.9,
        min_rows=200,
        window_rows=400,
        budget=0.05,
        period_checks=720,
        consecutive=2,
        resamples=200,
        seed=1,
    )


def clean_records(n: int, seed: int, shift: float = 0.0) -> list[InferenceRecord]:
    rng = np.random.default_rng(seed)
    return [
        record(
            i,
            {"x": float(rng.normal(shift)), "y": float(rng.normal()), "kind": str(rng.choice(["a", "b", "c"]))},
            version="1" if i % 9 else "0",
            prediction=str(rng.choice(["a", "b"])),
            label=str(rng.choice(["a", "b"])) if i % 3 else None,
        )
        for i in range(n)
    ]


def old_frames(records: list[InferenceRecord], version: str) -> dict:
    """What the drift flow built from a list of all the window's records before it read page by page."""
    served = [r for r in records if r.model_version == version]
    labelled = [r for r in served if r.label is not None]
    return {
        "current": pd.DataFrame.from_records([r.features for r in records]),
        "current_predictions": pd.Series([r.prediction for r in served], dtype=object),
        "current_labels": pd.Series([r.label for r in labelled], dtype=object),
        "labelled_predictions": pd.Series([r.prediction for r in labelled], dtype=object),
    }


@pytest.mark.parametrize("shift", [0.0, 0.6])
def test_below_the_sample_size_the_paged_check_finds_exactly_what_the_whole_frame_check_finds(
    reference: pd.DataFrame, calibrated, shift: float
) -> None:
    records, config = clean_records(400, seed=4, shift=shift), CheckConfig(max_window_rows=1000, min_labelled=30)
    frames = old_frames(records, "1")
    whole = run_check(reference[["x", "y", "kind"]], frames.pop("current"), calibrated, config=config, **frames)
    window = read_drift_window(
        pages_of(records, 64),
        quality=quality_tally(reference, calibrated, config),
        champion_version="1",
        sample_size=config.max_window_rows,
        seed=config.sample_seed,
    )
    paged = run_window_check(reference, window, calibrated, config=config)

    assert (window.rows, window.pages, window.sampled) == (400, 7, False)
    assert (window.first_ts, window.last_ts) == (min(r.ts for r in records), max(r.ts for r in records))
    assert paged.quality.as_dict() == whole.quality.as_dict() and paged.alarms() == whole.alarms()
    assert (paged.sample_rows, paged.tested_columns) == (whole.sample_rows, whole.tested_columns)
    assert [asdict(c) for c in paged.drift.columns] == [asdict(c) for c in whole.drift.columns]
    assert (paged.prediction, paged.label, paged.accuracy) == (whole.prediction, whole.label, whole.accuracy)
    assert whole.accuracy is not None and whole.prediction is not None
    assert ("x" in whole.alarms()) == (shift > 0)


def test_above_the_sample_size_the_drift_tests_run_on_the_seeded_sample_and_quality_on_every_row(
    reference: pd.DataFrame, calibrated
) -> None:
    records, config = clean_records(3000, seed=5, shift=0.6), CheckConfig(max_window_rows=500, sample_seed=11)

    def read():
        return read_drift_window(
            pages_of(records, 256),
            quality=quality_tally(reference, calibrated, config),
            champion_version="1",
            sample_size=config.max_window_rows,
            seed=config.sample_seed,
        )

    window, again = read(), read()
    pd.testing.assert_frame_equal(window.sample, again.sample)
    result = run_window_check(reference, window, calibrated, config=config)
    assert (window.rows, len(window.sample), window.sampled) == (3000, 500, True)
    assert window.peak_rows <= 500 + 256
    assert (result.sample_rows, result.sample_seed) == (500, 11) and "x" in result.alarms()
    assert (
        result.quality.as_dict()
        == check_quality(
            reference,
            features_frame(records),
            ["x", "y", "kind"],
            {"x": "numerical", "y": "numerical", "kind": "categorical"},
        ).as_dict()
    )
    served = [r for r in records if r.model_version == "1"]
    assert result.prediction.rows == len(served)
    assert result.accuracy.labelled == sum(r.label is not None for r in served)


class LivePage(list):
    """A page that counts how many pages are alive at once."""

    live = 0
    most = 0

    def __init__(self, records):
        super().__init__(records)
        LivePage.live += 1
        LivePage.most = max(LivePage.most, LivePage.live)

    def __del__(self):
        LivePage.live -= 1


def router_pages(pages: int, size: int, seed: int = 0) -> Iterator[list[InferenceRecord]]:
    """A fake router: pages of fresh records made on demand, as `RouterClient.pages` decodes them."""
    rng = np.random.default_rng(seed)
    for p in range(pages):
        values = rng.normal(size=(size, 4))
        kinds = rng.choice(["a", "b", "c"], size)
        yield LivePage(
            record(
                p * size + i,
                {"x": float(values[i, 0]), "y": float(values[i, 1]), "kind": str(kinds[i])},
                prediction="a" if values[i, 2] > 0 else "b",
                label=("a" if values[i, 3] > 0 else "b") if i % 4 == 0 else None,
            )
            for i in range(size)
        )


@pytest.mark.slow
def test_a_window_of_300_000_rows_is_read_holding_one_page_and_the_sample(reference: pd.DataFrame, calibrated) -> None:
    """The bound: live pages and rows held stay at one page plus the sample; the traced memory stays far below what
    the window's records would take (measured here: one page of these records costs about 1 MB)."""
    pages, size, sample = 300, 1000, 20_000
    config = CheckConfig(max_window_rows=sample)
    LivePage.live = LivePage.most = 0
    gc.collect()
    tracemalloc.start()
    try:
        one_page = list(router_pages(1, size, seed=99))
        page_bytes = tracemalloc.get_traced_memory()[0]
        del one_page
        gc.collect()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        window = read_drift_window(
            router_pages(pages, size),
            quality=quality_tally(reference, calibrated, config),
            champion_version="1",
            sample_size=sample,
            seed=config.sample_seed,
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert (window.rows, window.pages, len(window.sample)) == (pages * size, pages, sample)
    assert LivePage.most <= 2  # the page being read, and the next one while the source builds it
    assert window.peak_rows <= sample + size
    # All 300 pages at once would be about 300 x page_bytes; the reader peaks near one page and the sample's frames.
    assert peak < 20 * page_bytes, (peak, page_bytes)
    assert window.served.predictions and window.served.labelled == pages * size // 4
    print(f"peak traced {peak / 1e6:.1f} MB reading {pages * size} rows; one page of records {page_bytes / 1e6:.2f} MB")


def test_the_retrains_rows_built_page_by_page_are_the_rows_of_all_records(iris: pd.DataFrame) -> None:
    like = original_rows(iris.head(10))
    records = [
        record(i, {"sepal_length": 5.0 + i / 100, "sepal_width": 3.0, "petal_length": 1.4, "petal_width": 0.2},
               label="setosa" if i % 3 else None)
        for i in range(95)
    ]  # fmt: skip
    for i in range(20, 30):  # a page whose records all lack a feature: an all-missing column in that page's rows
        del records[i].features["petal_width"]
    expected = traffic_rows(records, like, "species")
    pd.testing.assert_frame_equal(read_traffic_rows(pages_of(records, 10), like, "species"), expected)
    pd.testing.assert_frame_equal(read_traffic_rows([], like, "species"), traffic_rows([], like, "species"))


def fake_router(pages: int, size: int) -> httpx.MockTransport:
    """A router whose inference log is `pages` pages of `size` records, each page made (and encoded) on request."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == ROUTE_INFERENCES
        number = int(request.url.params.get("before", "0"))
        records = list(next(router_pages(1, size, seed=number)))
        body = InferencePage(records=records, next_cursor=str(number + 1) if number + 1 < pages else None)
        return httpx.Response(200, content=msgspec.json.encode(body))

    return httpx.MockTransport(handle)


@pytest.mark.slow
def test_through_the_router_client_the_reader_holds_about_one_page(reference: pd.DataFrame, calibrated) -> None:
    """The same bound through `RouterClient.pages` over HTTP (a fake transport): the client keeps no page behind."""
    pages, size, sample = 100, 1000, 5000
    config = CheckConfig(max_window_rows=sample)
    with RouterClient("http://router", transport=fake_router(pages, size)) as client:
        gc.collect()
        tracemalloc.start()
        try:
            one = next(client.pages(limit=size, page_size=size))
            page_bytes = tracemalloc.get_traced_memory()[0]
            del one
            gc.collect()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            window = read_drift_window(
                client.pages(limit=pages * size, page_size=size),
                quality=quality_tally(reference, calibrated, config),
                champion_version="1",
                sample_size=sample,
                seed=config.sample_seed,
            )
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert (window.rows, window.pages, len(window.sample)) == (pages * size, pages, sample)
    assert peak < 8 * page_bytes, (peak, page_bytes)  # all pages at once: about 100 x page_bytes
    print(f"peak traced {peak / 1e6:.1f} MB reading {pages * size} rows over HTTP; one page {page_bytes / 1e6:.2f} MB")
