"""Settings of the batch side (flows), read from the environment (prefix `DRIFTLOOP_`) and an optional `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import msgspec
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.api import ExperimentPlan
from contracts.auth import RouterTokens

# The plan's defaults live once, in the contract the router validates plans against.
_PLAN = {f.name: f.default for f in msgspec.structs.fields(ExperimentPlan) if f.default is not msgspec.NODEFAULT}


class FlowSettings(RouterTokens):
    """Everything the flows need to know about the world around them (router tokens: see `contracts.auth`)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".driftloop"), description="Folder that holds all local state (reports, data, stores).")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server (or store) URI.")
    mlflow_experiment: str = Field("driftloop", description="MLflow experiment that holds training runs.")
    model_name: str = Field("IrisClassifier", description="Registered model name in MLflow.")
    dataset: str = Field("iris", description="Reference data: `iris` or a path to a CSV/Parquet file.")
    target: str = Field("species", description="Name of the target column in the dataset.")
    router_url: str = Field("http://127.0.0.1:8000", description="Base URL of the prediction router.")
    http_timeout_seconds: float = Field(10.0, description="Timeout of each HTTP call to the router.")
    router_page_size: int = Field(
        1000, ge=1, le=10_000, description="Records per request when drift and retrain walk the router's inference log."
    )

    drift_window_rows: int = Field(300, description="At most this many of the newest logged requests form the window.")
    drift_window_minutes: float = Field(60.0, description="Only requests newer than this many minutes count.")
    drift_min_rows: int = Field(50, description="Below this many rows in the window the check is skipped.")
    drift_share_threshold: float = Field(
        0.3, ge=0, le=1, description="A check is critical when at least this share of the feature columns drifted."
    )
    drift_methods: dict[str, str] = Field(
        {},
        description="Evidently method per column over the defaults (`driftloop_ks_d` for numbers, `driftloop_tvd` "
        'for categories), as JSON: `{"age": "wasserstein"}`. Its threshold is calibrated like the defaults.',
    )
    drift_budget: float = Field(
        0.05, gt=0, lt=1, description="Allowed probability of a spurious drift episode per budget period."
    )
    drift_budget_checks: int = Field(
        720, ge=1, description="Checks in one budget period (720: hourly checks over 30 days)."
    )
    drift_consecutive: int = Field(
        2, ge=1, description="Alarms in a row a finding needs before it counts (persistence across checks)."
    )
    drift_calibration_resamples: int = Field(
        2000,
        ge=100,
        description="No-drift windows resampled from the reference per window size when calibrating (the thresholds "
        "are a 95% upper bound of the budget's quantile: more resamples bring them closer to it; at least 352).",
    )
    drift_reference_rows: int = Field(
        10_000, ge=10, description="A version's reference: a seeded random sample of this many of its training rows."
    )
    drift_max_window_rows: int = Field(
        20_000,
        ge=100,
        description="A larger window is tested on a seeded sample of this many rows (size, seed reported).",
    )
    drift_important_columns: list[str] = Field(
        [], description="Columns whose drift alone makes a check critical (JSON list)."
    )
    drift_retrain_severity: Literal["warning", "critical"] = Field(
        "warning", description="The severity from which a check emits `drift.detected` and so starts a retrain."
    )
    drift_missing_tolerance: float = Field(
        0.05, ge=0, le=1, description="A column's missing share may exceed the reference's by this much."
    )
    drift_range_tolerance: float = Field(
        0.02, ge=0, le=1, description="Share of a window's values allowed outside the reference's range."
    )
    drift_unseen_tolerance: float = Field(
        0.02, ge=0, le=1, description="Share of a window's values allowed in categories the reference lacks."
    )
    drift_quality_alpha: float = Field(
        1e-4, gt=0, lt=1, description="A quality finding must also be beyond chance at this level (binomial test)."
    )
    drift_outcome_alpha: float = Field(
        1e-3, gt=0, lt=1, description="Level of the prediction- and label-drift tests (chi-squared on class shares)."
    )
    drift_max_accuracy_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="A performance drop: the interval on labelled accuracy lies this far below the holdout's.",
    )
    drift_min_labelled: int = Field(
        30, ge=1, description="Fewer labelled requests in the window: no accuracy or label-drift verdict."
    )

    retrain_models: list[str] = Field(
        ["lr", "dt", "rf", "et", "knn", "nb"], description="PyCaret model ids that compare_models tries."
    )
    retrain_folds: int = Field(3, description="Cross-validation folds in compare_models.")
    retrain_candidates: int = Field(
        3, description="The best models of compare_models whose serving cost is measured; the winner is one of them."
    )
    retrain_latency_budget_ms: float = Field(
        50.0,
        description="CPU ms a single-row predict of the winner may cost; the champion's cost under the latency "
        "guardrail's limit tightens it.",
    )
    retrain_min_labelled: int = Field(
        30, description="Fewer labelled requests than this to train on (outside the gate's holdout): no retrain."
    )
    retrain_max_labelled: int = Field(
        10_000,
        ge=1,
        le=10_000,
        description="At most this many of the window's newest labelled requests are read (a page at a time).",
    )
    retrain_window_days: float = Field(
        7.0, gt=0, description="Labelled traffic of the last this many days is training and holdout material."
    )
    retrain_history_share: float = Field(
        0.5, ge=0, le=1, description="Share of the original training data every retrain keeps (a seeded sample)."
    )
    retrain_max_rows: int = Field(
        1_000_000, ge=1, description="At most this many training rows (history and traffic cut in proportion)."
    )
    retrain_tune_iterations: int = Field(
        10, ge=0, description="At most this many hyperparameter draws when tuning the winner (0: no tuning)."
    )
    retrain_tune_seconds: float = Field(
        120.0, ge=0, description="Time budget of tuning: the draws are cut to what fits, from the winner's CV time."
    )
    retrain_fix_imbalance: Literal["auto", "always", "never"] = Field(
        "auto", description="Rebalance the classes in training: `auto` from the ratio below, `always` or `never`."
    )
    retrain_imbalance_ratio: float = Field(
        3.0, gt=1, description="`auto` rebalances when the largest class has this many times the smallest's rows."
    )
    retrain_imbalance_method: str = Field(
        "smote", description="PyCaret's fix_imbalance_method: an imblearn resampler name (`smote`, ...)."
    )
    retrain_scale_rows: int = Field(
        50_000, ge=1, description="From this many training rows on, the model list and folds adapt (scale policy)."
    )
    retrain_scale_folds: int = Field(2, ge=2, description="Cross-validation folds at scale.")
    retrain_scale_sample_rows: int = Field(
        50_000, ge=100, description="At scale, the sampled models train on a seeded sample of this many rows."
    )
    retrain_scale_sampled_models: list[str] = Field(
        ["rf", "et", "gbc", "ada", "knn"],
        description="Models whose cost grows badly with rows: at scale they train on the seeded sample.",
    )
    retrain_scale_dropped_models: list[str] = Field(["rbfsvm", "gpc", "mlp"], description="Models left out at scale.")
    registry_lock_wait_seconds: float = Field(
        300.0,
        description="How long a run waits for the registry lock (held by whoever moves an alias) before it fails.",
    )
    retrain_slot_wait_seconds: float = Field(
        30.0, gt=0, description="How long taking the model's free retrain slot may take (a held one is not waited for)."
    )
    gate_min_f1: float = Field(0.7, description="A candidate must reach this holdout F1 (macro) to be a challenger.")
    gate_holdout_share: float = Field(
        0.3, ge=0, lt=1, description="Share of the window's requests unseen by the champion held out for the gate."
    )
    gate_min_holdout_rows: int = Field(30, ge=1, description="Fewer holdout rows than this: no retrain.")
    gate_max_loss: float = Field(
        0.02, ge=0, description="The gate fails when its interval leaves open an F1 loss larger than this."
    )
    gate_confidence: float = Field(0.95, gt=0, lt=1, description="Level of the interval on the F1 difference.")
    gate_resamples: int = Field(2000, ge=100, description="Bootstrap resamples of that interval.")
    session_id: int = Field(42, description="Random seed for PyCaret, the window's samples and the bootstrap.")

    ab_alpha: float = Field(0.05, description="Significance level of the A/B test (valid under repeated looks).")
    ab_power: float = Field(0.8, description="Power the experiment is planned for.")
    ab_mde: float = Field(
        0.05, description="Minimum detectable effect: accuracy lift planned for (absolute, or relative: see below)."
    )
    ab_mde_relative: bool = Field(
        False, description="Read `ab_mde` as relative to the champion's accuracy (0.05: a 5% better accuracy)."
    )
    ab_split_b: float = Field(0.5, description="Share of users sent to the challenger during an experiment.")
    ab_max_duration_hours: float = Field(72.0, description="An experiment without a win by then is rolled back.")
    ab_srm_threshold: float = Field(
        _PLAN["srm_threshold"],
        description="Level of the always-valid sample ratio test over all looks (a mismatch pauses the experiment).",
    )
    ab_guardrail_error_margin: float = Field(
        _PLAN["guardrail_error_margin"],
        description="Error-rate non-inferiority margin, absolute part (added to the relative part).",
    )
    ab_guardrail_error_margin_relative: float = Field(
        _PLAN["guardrail_error_margin_relative"],
        description="Error-rate non-inferiority margin, relative part (a share of the champion's error rate).",
    )
    ab_watch_hours: float = Field(
        168.0,
        ge=0,
        description="After a PROMOTE, watch the new champion this long against its promise (0: off); a week at the "
        "traffic that reached the plan in a day or so (bench/ab_simulation.py: 72 h restore too few lucky promotions).",
    )
    ab_guardrail_latency_margin: float = Field(
        _PLAN["guardrail_latency_margin"], description="Allowed extra p95 latency of the challenger (relative)."
    )
    ab_guardrail_latency_slack_ms: float = Field(
        _PLAN["guardrail_latency_slack_ms"], description="Allowed extra p95 latency on top (absolute, ms)."
    )


@lru_cache
def get_settings() -> FlowSettings:
    """The flows' settings, read once per process."""
    return FlowSettings()
