"""The experiment record: start, plan, sample reached (with its event) and end, shared by replicas through the store."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from contracts.api import Experiment, ExperimentEnd, ExperimentPlan
from contracts.events import (
    EXPERIMENT_SAMPLE_REACHED,
    SampleReachedPayload,
    model_resource,
    model_version_resource,
)
from serving.errors import ExperimentConflict, InvalidPlan, ModelSourceError, RouterError
from serving.services.events import EventEmitter
from serving.services.models import ModelManager, ModelSet
from serving.services.store import ExperimentRow, Store

logger = logging.getLogger(__name__)


def experiment_id(champion_version: str, challenger_version: str) -> str:
    """The id of the experiment of a champion/challenger pair (the same as `ModelSet.experiment_id`)."""
    return f"v{champion_version}-vs-v{challenger_version}"


def _now() -> datetime:
    return datetime.now(UTC)


def _view(row: ExperimentRow) -> Experiment:
    """The API shape of a stored experiment: ended once ended, running once served, else none (planned only)."""
    status = "ended" if row.ended_at else "running" if row.started_at else "none"
    return Experiment(
        experiment_id=row.experiment_id,
        champion_version=row.champion_version,
        challenger_version=row.challenger_version,
        status=status,
        started_at=row.started_at,
        plan=None if row.plan is None else msgspec.convert(row.plan, ExperimentPlan),
        sample_reached_at=row.sample_reached_at,
        ended_at=row.ended_at,
        # The contract has one field for both: the decision leads, as in "ROLLBACK: p=0.003, challenger worse".
        end_reason=None if row.ended_at is None else f"{row.end_decision}: {row.end_reason}",
    )


class ExperimentService:
    """Keeps the store's experiment record in step with the models the router serves. Blocking: call from a thread."""

    def __init__(
        self,
        *,
        store: Store,
        models: ModelManager,
        emit: EventEmitter,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Tie the record to a store and a model holder.

        Args:
            store: Where experiments are kept (shared by replicas).
            models: The champion/challenger being served.
            emit: Sends Prefect events (`serving.services.events.emit_prefect_event` in production).
            clock: Current UTC time.
        """
        self.store = store
        self.models = models
        self.emit = emit
        self.clock = clock

    @property
    def model_name(self) -> str:
        """Registered model served."""
        return self.models.current.model_name

    def refresh(self) -> ModelSet:
        """Re-read the aliases, then record what is served (`track`), even when the registry failed.

        Returns:
            The set serving after the refresh.

        Raises:
            ModelSourceError: The registry could not be read; the previous set keeps serving.
        """
        try:
            return self.models.refresh()
        finally:
            self.track()

    def track(self) -> None:
        """Mark the current experiment started and emit its sample-reached event once; never raises."""
        current = self.models.current
        if current.champion_version is None or current.challenger_version is None:
            return
        exp_id = experiment_id(current.champion_version, current.challenger_version)
        try:
            row = self.store.mark_started(
                model_name=current.model_name,
                experiment_id=exp_id,
                champion_version=current.champion_version,
                challenger_version=current.challenger_version,
                at=self.clock(),
            )
            self._check_sample(row)
        except Exception:
            logger.exception("could not update experiment %s in the store; next refresh retries", exp_id)

    def _check_sample(self, row: ExperimentRow) -> None:
        if row.plan is None or row.sample_reached_at is not None or row.ended_at is not None:
            return
        plan = msgspec.convert(row.plan, ExperimentPlan)
        labelled = self.store.labelled_per_arm(row.experiment_id)
        champion, challenger = labelled.get("champion", 0), labelled.get("challenger", 0)
        if min(champion, challenger) < plan.min_samples_per_arm:
            return
        at = self.clock()
        # Conditional on `sample_reached_at IS NULL`: of all replicas and refreshes, one wins and emits.
        if not self.store.claim_sample_reached(row.experiment_id, at):
            return
        payload = SampleReachedPayload(
            model_name=row.model_name,
            experiment_id=row.experiment_id,
            champion_version=row.champion_version,
            challenger_version=row.challenger_version,
            min_samples_per_arm=plan.min_samples_per_arm,
            champion_labelled=champion,
            challenger_labelled=challenger,
        )
        try:
            self.emit(
                event=EXPERIMENT_SAMPLE_REACHED,
                resource=model_resource(row.model_name),
                related=[model_version_resource(row.model_name, row.challenger_version)],
                payload=payload.model_dump(mode="json"),
            )
        except Exception:
            logger.exception(
                "could not emit %s for %s; next refresh retries", EXPERIMENT_SAMPLE_REACHED, row.experiment_id
            )
            self.store.release_sample_reached(row.experiment_id, at)
            return
        logger.info(
            "experiment %s reached %d labelled outcomes per arm (champion %d, challenger %d)",
            row.experiment_id,
            plan.min_samples_per_arm,
            champion,
            challenger,
        )

    def current(self, snapshot: ModelSet | None = None) -> Experiment:
        """The experiment being served: a champion alone is status `none`; a pair shows its stored record.

        Args:
            snapshot: The model set a request works with; `models.current` when None.

        Raises:
            RuntimeError: No champion is loaded (check with the controller first).
        """
        current = snapshot or self.models.current
        if current.champion_version is None:
            raise RuntimeError("no champion loaded")
        if current.challenger_version is None:
            return Experiment(
                experiment_id=f"v{current.champion_version}",
                champion_version=current.champion_version,
                challenger_version=None,
                status="none",
            )
        exp_id = experiment_id(current.champion_version, current.challenger_version)
        row = self.store.get_experiment(exp_id)
        if row is None:
            # Served but not recorded yet (the store failed at the last refresh).
            return Experiment(
                experiment_id=exp_id,
                champion_version=current.champion_version,
                challenger_version=current.challenger_version,
                status="running",
            )
        return _view(row)

    def set_plan(self, plan: ExperimentPlan) -> Experiment:
        """Store the plan of `v{champion}-vs-v{challenger}` (served or not yet) and set the split to its own.

        Args:
            plan: The plan; its schema constraints were checked on decoding.

        Returns:
            The experiment the plan belongs to.

        Raises:
            InvalidPlan: Empty versions, or the same version on both arms.
            ExperimentConflict: That experiment has ended.
        """
        versions = {"champion_version": plan.champion_version, "challenger_version": plan.challenger_version}
        problems = [f"{name} is empty" for name, version in versions.items() if not version.strip()]
        if not problems and plan.champion_version == plan.challenger_version:
            problems.append(f"champion_version and challenger_version are both {plan.champion_version!r}")
        if problems:
            raise InvalidPlan("invalid experiment plan: " + "; ".join(problems))
        row = self.store.save_plan(
            model_name=self.model_name,
            experiment_id=experiment_id(plan.champion_version, plan.challenger_version),
            champion_version=plan.champion_version,
            challenger_version=plan.challenger_version,
            plan=msgspec.to_builtins(plan),
        )
        self.store.set_split(plan.ab_split_b)
        logger.info("plan stored for %s, ab_split_b=%s", row.experiment_id, plan.ab_split_b)
        return _view(row)

    def end(self, data: ExperimentEnd) -> Experiment:
        """Mark the current (or, once the registry moved, the most recent) experiment ended, then reload the models.

        Args:
            data: The challenger whose experiment ends, and the decision.

        Returns:
            The ended experiment.

        Raises:
            ExperimentConflict: That challenger is not in the current or most recent experiment, or it
                already ended with another decision.
            ModelSourceError: It was marked ended, but reloading the models failed.
        """
        current = self.models.current
        if current.champion_version is not None and current.challenger_version is not None:
            pair: tuple[str, str] | None = (current.champion_version, current.challenger_version)
        else:
            latest = self.store.latest_started_experiment()
            pair = None if latest is None else (latest.champion_version, latest.challenger_version)
        if pair is None or pair[1] != data.challenger_version:
            which = "no experiment was ever served" if pair is None else f"the experiment is {experiment_id(*pair)}"
            raise ExperimentConflict(
                f"challenger {data.challenger_version!r} is not in the current or most recent experiment ({which})",
                extra={"challenger_version": data.challenger_version},
            )
        exp_id = experiment_id(*pair)
        row = self.store.end_experiment(
            model_name=current.model_name,
            experiment_id=exp_id,
            champion_version=pair[0],
            challenger_version=pair[1],
            decision=data.decision,
            reason=data.reason,
            at=self.clock(),
        )
        logger.info("experiment %s ended: %s: %s", exp_id, row.end_decision, row.end_reason)
        try:
            self.refresh()
        except RouterError as exc:
            raise ModelSourceError(
                f"experiment {exp_id} is marked ended, but reloading the models failed: {exc.detail} "
                "(POST /models/reload to retry)"
            ) from exc
        return _view(row)
