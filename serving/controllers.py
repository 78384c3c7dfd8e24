"""HTTP handlers of the router: predictions, feedback, config, experiments and their outcomes, inference log, models."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Response, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from contracts.api import (
    Arm,
    ArmOutcome,
    ConfigUpdate,
    ConfusionCell,
    ErrorBody,
    Experiment,
    ExperimentEnd,
    ExperimentPlan,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    InferencePage,
    InferenceRecord,
    LatencyBucket,
    Outcomes,
    PredictRequest,
    PredictResponse,
    RouterConfig,
)
from contracts.registry import CHAMPION
from serving.errors import NoModelLoaded, PredictionFailed
from serving.services.assignment import assign_arm
from serving.services.experiments import ExperimentService
from serving.services.models import ModelManager, ModelSet, ServedModel
from serving.services.store import ArmCounts, InferenceRow, PredictionErrorRow, Store
from serving.settings import RouterSettings

logger = logging.getLogger(__name__)

# Every POST answers 200, not 201: clients use the router as an RPC endpoint and check one success code.
# Handlers that touch the store or MLflow are sync and run in a worker thread (`sync_to_thread=True`),
# so pandas, SQL commits and registry calls never block the event loop.

_ARMS: tuple[Arm, ...] = ("champion", "challenger")


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


_NO_MODEL = _error("No champion is loaded (the registry has no loadable `champion` alias)")


def _require_champion(models: ModelSet) -> None:
    if models.champion is None:
        raise NoModelLoaded(
            f"no model loaded: registered model {models.model_name!r} has no loadable {CHAMPION!r} alias "
            "(see GET /health; POST /models/reload after setting it)"
        )


def _current_split(store: Store, settings: RouterSettings) -> float:
    split = store.get_split()
    return settings.ab_split_b if split is None else split


def _prediction_failed(
    store: Store, served: ServedModel, arm: Arm, experiment_id: str, user_id: str, exc: Exception
) -> PredictionFailed:
    """Record a model failure against its arm and build the 500 the client gets."""
    request_id = uuid.uuid4().hex
    logger.exception(
        "%s v%s (%s arm) failed to predict, request %s", served.name, served.version, arm, request_id, exc_info=exc
    )
    try:
        store.record_error(
            PredictionErrorRow(
                request_id=request_id,
                ts=datetime.now(UTC),
                user_id=user_id,
                arm=arm,
                model_name=served.name,
                model_version=served.version,
                experiment_id=experiment_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        )
    except Exception:
        logger.exception("could not record the failed prediction %s", request_id)
    return PredictionFailed(
        f"model {served.name} v{served.version} ({arm} arm) failed to predict: {type(exc).__name__} "
        f"(request {request_id}; see the router log)",
        extra={"request_id": request_id, "arm": arm, "model_version": served.version, "experiment_id": experiment_id},
    )


class InferenceController(Controller):
    """Predictions, their labels, and the log of both."""

    path = "/"
    tags = ["inference"]

    @post(
        "/predict",
        operation_id="predict",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses={
            422: _error("The features do not match the model signature"),
            500: _error("The model raised while predicting (the attempt is recorded as an error of its arm)"),
            503: _NO_MODEL,
        },
    )
    def predict(
        self, data: PredictRequest, store: Store, models: ModelManager, settings: RouterSettings
    ) -> PredictResponse:
        """Assign the user to an arm, predict with that arm's model, log the request (committed), answer."""
        started = time.perf_counter()
        # One snapshot for the whole request: a concurrent swap cannot mix versions within it.
        current = models.current
        _require_champion(current)
        assert current.experiment_id is not None
        arm: Arm = assign_arm(
            data.user_id,
            salt=settings.assignment_salt,
            split_b=_current_split(store, settings) if current.challenger else 0.0,
            has_challenger=current.challenger is not None,
        )
        served = current.for_arm(arm)
        assert served is not None
        row = served.check(data.features)
        # CPU time of this thread in the model call: the model's own cost, which a busy machine does not inflate.
        cpu_started = time.thread_time()
        try:
            prediction = served.predict(row)
        except Exception as exc:
            raise _prediction_failed(store, served, arm, current.experiment_id, data.user_id, exc) from exc
        compute_ms = (time.thread_time() - cpu_started) * 1000
        latency_ms = (time.perf_counter() - started) * 1000
        request_id = uuid.uuid4().hex
        store.record(
            InferenceRow(
                request_id=request_id,
                ts=datetime.now(UTC),
                user_id=data.user_id,
                arm=arm,
                model_name=served.name,
                model_version=served.version,
                experiment_id=current.experiment_id,
                features=row,
                prediction=str(prediction),
                label=None if data.label is None else str(data.label),
                latency_ms=latency_ms,
                compute_ms=compute_ms,
            )
        )
        return PredictResponse(
            request_id=request_id,
            prediction=prediction,
            model_name=served.name,
            model_version=served.version,
            arm=arm,
            experiment_id=current.experiment_id,
        )

    @post(
        "/feedback",
        operation_id="submit_feedback",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses={404: _error("Unknown request_id"), 409: _error("The request already has a label")},
    )
    def feedback(self, data: FeedbackRequest, store: Store) -> FeedbackResponse:
        """Attach the true label to a logged prediction (write-once)."""
        row = store.set_label(data.request_id, str(data.label))
        assert row.label is not None
        return FeedbackResponse(
            request_id=row.request_id,
            label=row.label,
            prediction=row.prediction,
            correct=row.label == row.prediction,
            arm=row.arm,
            model_version=row.model_version,
        )

    @get("/inferences", operation_id="list_inferences", sync_to_thread=True)
    def inferences(
        self,
        store: Store,
        limit: Annotated[int, Parameter(ge=1, le=10_000, description="At most this many records.")] = 500,
        since: Annotated[
            datetime | None, Parameter(description="Only records at or after this ISO datetime (naive: UTC).")
        ] = None,
        labelled: Annotated[
            bool | None, Parameter(description="true: only labelled records; false: only unlabelled.")
        ] = None,
    ) -> InferencePage:
        """The inference log, newest first (the drift and retrain flows read their windows here)."""
        rows = store.recent(limit=limit, since=since, labelled=labelled)
        return InferencePage(
            records=[
                InferenceRecord(
                    request_id=r.request_id,
                    ts=r.ts,
                    user_id=r.user_id,
                    arm=r.arm,
                    model_version=r.model_version,
                    experiment_id=r.experiment_id,
                    features=r.features,
                    prediction=r.prediction,
                    label=r.label,
                    latency_ms=r.latency_ms,
                    compute_ms=r.compute_ms,
                )
                for r in rows
            ]
        )


class ConfigController(Controller):
    """The run-time configuration, shared by every replica through the store."""

    path = "/config"
    tags = ["config"]

    @get("/", operation_id="get_config", sync_to_thread=True)
    def get_config(self, store: Store, settings: RouterSettings) -> RouterConfig:
        """The split in force."""
        return RouterConfig(ab_split_b=_current_split(store, settings))

    @post("/", operation_id="set_config", status_code=HTTP_200_OK, sync_to_thread=True)
    def set_config(self, data: ConfigUpdate, store: Store) -> RouterConfig:
        """Change the split for every replica (takes effect on the next request)."""
        return RouterConfig(ab_split_b=store.set_split(data.ab_split_b))


class ExperimentController(Controller):
    """The current experiment: its record, its plan, its end, and how its arms are doing."""

    path = "/experiment"
    tags = ["experiment"]

    @get("/", operation_id="get_experiment", sync_to_thread=True, responses={503: _NO_MODEL})
    def get_experiment(self, models: ModelManager, experiments: ExperimentService) -> Experiment:
        """The experiment being served: started, plan, sample reached, ended (status `none` without a challenger)."""
        _require_champion(models.current)
        return experiments.current()

    @put(
        "/plan",
        operation_id="set_experiment_plan",
        sync_to_thread=True,
        responses={
            409: _error("That experiment has ended"),
            422: _error("The plan names no versions or the same version twice"),
        },
    )
    def set_plan(self, data: ExperimentPlan, experiments: ExperimentService) -> Experiment:
        """Store the plan of `v{champion}-vs-v{challenger}` (before or while it runs) and set the split to its own."""
        return experiments.set_plan(data)

    @post(
        "/end",
        operation_id="end_experiment",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses={
            409: _error("The challenger is not the current or most recent experiment's, or it ended otherwise"),
            503: _error("Marked ended, but the models could not be reloaded from the registry"),
        },
    )
    def end(self, data: ExperimentEnd, experiments: ExperimentService) -> Experiment:
        """Mark the experiment of this challenger ended with its decision, then reload the models at once."""
        return experiments.end(data)

    @get("/outcomes", operation_id="get_outcomes", sync_to_thread=True, responses={503: _NO_MODEL})
    def outcomes(
        self,
        store: Store,
        models: ModelManager,
        experiments: ExperimentService,
        settings: RouterSettings,
        bucket_seconds: Annotated[
            int, Parameter(ge=1, le=86_400, description="Width of the latency buckets in seconds.")
        ] = 60,
    ) -> Outcomes:
        """Per arm of the current experiment: requests, labels, errors, users, latency percentiles, confusion, and
        latency per time bucket."""
        current = models.current
        _require_champion(current)
        experiment = experiments.current(current)
        counts = store.outcomes(experiment.experiment_id)
        zero = ArmCounts(requests=0, labelled=0, correct=0, incorrect=0)
        arms: list[ArmOutcome] = []
        for arm in _ARMS:
            served = current.for_arm(arm)
            if served is None:
                continue
            c = counts.get(arm, zero)
            arms.append(
                ArmOutcome(
                    arm=arm,
                    model_version=served.version,
                    requests=c.requests,
                    labelled=c.labelled,
                    correct=c.correct,
                    incorrect=c.incorrect,
                    errors=c.errors,
                    users=c.users,
                    labelled_users=c.labelled_users,
                    latency_p50_ms=c.latency_p50_ms,
                    latency_p95_ms=c.latency_p95_ms,
                    confusion=[ConfusionCell(label=lb, prediction=pr, count=n) for lb, pr, n in c.confusion],
                )
            )
        return Outcomes(
            model_name=current.model_name,
            experiment_id=experiment.experiment_id,
            champion_version=experiment.champion_version,
            challenger_version=experiment.challenger_version,
            ab_split_b=_current_split(store, settings),
            arms=arms,
            started_at=experiment.started_at,
            plan=experiment.plan,
            bucket_seconds=bucket_seconds,
            latency_buckets=[
                LatencyBucket(
                    start=b.start,
                    arm=b.arm,
                    requests=b.requests,
                    latency_p95_ms=b.latency_p95_ms,
                    compute_ms_median=b.compute_ms_median,
                )
                for b in store.latency_buckets(experiment.experiment_id, bucket_seconds)
            ],
        )


def _health(current: ModelSet) -> Response[Health]:
    ok = current.champion is not None
    return Response(
        Health(
            status="ok" if ok else "no_model",
            model_name=current.model_name,
            champion_version=current.champion_version,
            challenger_version=current.challenger_version,
        ),
        status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )


_HEALTH_503 = ResponseSpec(
    data_container=Health, description="No champion loaded (status `no_model`)", generate_examples=False
)


class ModelController(Controller):
    """Which versions serve, and reloading them from the registry."""

    path = "/"
    tags = ["models"]

    @get("/health", operation_id="get_health", responses={503: _HEALTH_503})
    async def health(self, models: ModelManager) -> Response[Health]:
        """Liveness and the versions being served; 503 `no_model` without a champion."""
        return _health(models.current)

    @post(
        "/models/reload",
        operation_id="reload_models",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        responses={503: _HEALTH_503},
    )
    def reload_models(self, experiments: ExperimentService) -> Response[Health]:
        """Re-read the aliases now (call after moving one); 503 with ErrorBody when the registry fails."""
        return _health(experiments.refresh())
