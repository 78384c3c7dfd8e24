"""The experiment record: start, plan (fixed once started, checked against the registry), sample reached, end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from contracts.api import Experiment, ExperimentEnd, ExperimentPause, ExperimentPlan, Outcomes, experiment_id
from contracts.events import (
    EXPERIMENT_GUARDRAIL_BREACHED,
    EXPERIMENT_SAMPLE_REACHED,
    GuardrailBreachedPayload,
    SampleReachedPayload,
    model_resource,
    model_version_resource,
)
from contracts.registry import CHALLENGER, CHAMPION, TAG_PLAN_PREFIX
from serving.errors import ExperimentConflict, InvalidPlan, ModelSourceError, RouterError
from serving.services import views
from serving.services.guardrails import error_breach
from serving.services.models import ModelManager, ModelSet
from serving.services.models.manager import public_reason
from serving.services.store import ExperimentRow, NewEvent, Store

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _differences(a: ExperimentPlan, b: ExperimentPlan) -> list[str]:
    """The fields two plans disagree on, as `name: a != b`."""
    left, right = msgspec.structs.asdict(a), msgspec.structs.asdict(b)
    return [f"{name}: {left[name]!r} != {right[name]!r}" for name in left if left[name] != right[name]]


class ExperimentService:
    """Keeps the store's experiment record in step with the models the router serves. Blocking: call from a thread."""

    def __init__(
        self, *, store: Store, models: ModelManager, default_split: float, clock: Callable[[], datetime] = _now
    ) -> None:
        """Tie the record to a store and a model holder.

        Args:
            store: Where experiments are kept (shared by replicas).
            models: The champion/challenger being served (and the registry they come from).
            default_split: The split while the store holds none (settings).
            clock: Current UTC time.
        """
        self.store = store
        self.models = models
        self.default_split = default_split
        self.clock = clock
        self._checked: set[str] = set()
        """Experiments whose stored plan this process compared with the registry's tags."""
        self._breached: set[str] = set()
        """Experiments whose guardrail breach this process queued (or found queued)."""

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
        """Mark the current experiment started (with the registry's plan), queue sample-reached once; never raises."""
        current = self.models.current
        if current.champion_version is None or current.challenger_version is None:
            return
        exp_id = experiment_id(current.champion_version, current.challenger_version)
        try:
            row = self.store.experiments.get(exp_id)
            if exp_id not in self._checked:
                row = self._adopt_registry_plan(exp_id, current, row)
            elif row is None or row.started_at is None:
                row = self.store.experiments.mark_started(
                    model_name=current.model_name,
                    experiment_id=exp_id,
                    champion_version=current.champion_version,
                    challenger_version=current.challenger_version,
                    at=self.clock(),
                )
            self._check_sample(row)
            self._check_guardrails(row)
        except Exception:
            logger.exception("could not update experiment %s in the store; next refresh retries", exp_id)

    def _adopt_registry_plan(self, exp_id: str, current: ModelSet, row: ExperimentRow | None) -> ExperimentRow:
        """Start the experiment with the registry's plan; a stored plan that disagrees with the tags is replaced."""
        assert current.champion_version is not None and current.challenger_version is not None
        checked = True
        try:
            tagged = self.models.source.plan(current.challenger_version)
        except Exception as exc:
            # Start the experiment all the same; the tags are read again at the next refresh.
            logger.warning("could not read the plan tags of v%s: %s", current.challenger_version, exc)
            tagged, checked = None, False
        if tagged is not None and tagged.champion_version != current.champion_version:
            logger.warning(
                "the plan tags of v%s name champion v%s, but v%s serves: not adopted",
                current.challenger_version,
                tagged.champion_version,
                current.champion_version,
            )
            tagged = None
        plan = None if tagged is None else msgspec.to_builtins(tagged)
        adopting = tagged is not None and (row is None or row.plan is None)
        row = self.store.experiments.mark_started(
            model_name=current.model_name,
            experiment_id=exp_id,
            champion_version=current.champion_version,
            challenger_version=current.challenger_version,
            at=self.clock(),
            plan=plan,
        )
        if adopting and tagged is not None and row.plan == plan:
            # The plan's split from the first assignment on, as if the plan had been sent before the alias moved.
            self.store.config.set_split(tagged.ab_split_b)
            logger.info("experiment %s started with the registry's plan, ab_split_b=%s", exp_id, tagged.ab_split_b)
        if plan is not None and row.plan != plan:
            logger.warning(
                "experiment %s: the stored plan differs from the registry's tags (%s); the tags win",
                exp_id,
                "; ".join(_differences(views.plan_of(row), tagged)),  # type: ignore[arg-type]
            )
            self.store.experiments.replace_plan(exp_id, plan)
            row = self.store.experiments.get(exp_id) or row
        if checked:
            self._checked.add(exp_id)
        return row

    def _check_sample(self, row: ExperimentRow) -> None:
        if row.plan is None or row.sample_reached_at is not None or row.ended_at is not None:
            return
        plan = msgspec.convert(row.plan, ExperimentPlan)
        labelled = self.store.log.labelled_per_arm(row.experiment_id)
        champion, challenger = labelled.get(CHAMPION, 0), labelled.get(CHALLENGER, 0)
        if min(champion, challenger) < plan.min_samples_per_arm:
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
        event = NewEvent(
            key=f"{EXPERIMENT_SAMPLE_REACHED}:{row.model_name}:{row.experiment_id}",
            event=EXPERIMENT_SAMPLE_REACHED,
            resource=model_resource(row.model_name),
            related=[model_version_resource(row.model_name, row.challenger_version)],
            payload=payload.model_dump(mode="json"),
        )
        # Conditional on `sample_reached_at IS NULL`, with the event queued in the same transaction: of all
        # replicas and refreshes, one wins, and its event waits in the outbox until Prefect accepts it.
        if self.store.experiments.claim_sample_reached(row.experiment_id, self.clock(), event):
            logger.info(
                "experiment %s reached %d labelled outcomes per arm (champion %d, challenger %d); event queued",
                row.experiment_id,
                plan.min_samples_per_arm,
                champion,
                challenger,
            )

    def _check_guardrails(self, row: ExperimentRow) -> None:
        """Queue `guardrail_breached` once when the challenger's error rate breaches the plan's margin."""
        if row.plan is None or row.ended_at is not None or row.experiment_id in self._breached:
            return
        breach = error_breach(
            msgspec.convert(row.plan, ExperimentPlan), self.store.log.errors_per_arm(row.experiment_id)
        )
        if breach is None:
            return
        payload = GuardrailBreachedPayload(
            model_name=row.model_name,
            experiment_id=row.experiment_id,
            champion_version=row.champion_version,
            challenger_version=row.challenger_version,
            guardrail=breach.guardrail,
            detail=breach.detail,
            champion_requests=breach.champion[0],
            champion_errors=breach.champion[1],
            challenger_requests=breach.challenger[0],
            challenger_errors=breach.challenger[1],
        )
        event = NewEvent(
            key=f"{EXPERIMENT_GUARDRAIL_BREACHED}:{row.model_name}:{row.experiment_id}",
            event=EXPERIMENT_GUARDRAIL_BREACHED,
            resource=model_resource(row.model_name),
            related=[model_version_resource(row.model_name, row.challenger_version)],
            payload=payload.model_dump(mode="json"),
        )
        # Keyed per experiment: of all replicas and refreshes, one event is queued.
        if self.store.outbox.add(event, self.clock()):
            logger.warning(
                "experiment %s: guardrail %s breached: %s", row.experiment_id, breach.guardrail, breach.detail
            )
        self._breached.add(row.experiment_id)

    def current(self, snapshot: ModelSet | None = None) -> Experiment:
        """The experiment being served: a champion alone is status `none`; a pair shows its stored record.

        Args:
            snapshot: The model set a request works with; `models.current` when None.

        Raises:
            NoModelLoaded: No champion is loaded (503).
        """
        current = snapshot or self.models.current
        current.require_champion()
        assert current.champion_version is not None
        if current.challenger_version is None:
            return Experiment(
                experiment_id=f"v{current.champion_version}",
                champion_version=current.champion_version,
                challenger_version=None,
                status="none",
            )
        exp_id = experiment_id(current.champion_version, current.challenger_version)
        row = self.store.experiments.get(exp_id)
        if row is None:
            # Served but not recorded yet (the store failed at the last refresh).
            return Experiment(
                experiment_id=exp_id,
                champion_version=current.champion_version,
                challenger_version=current.challenger_version,
                status="running",
            )
        return views.experiment(row)

    def split(self) -> float:
        """The split in force (the store's, shared by replicas; the settings' until one is stored)."""
        split = self.store.config.get_split()
        return self.default_split if split is None else split

    def outcomes(self, bucket_seconds: int = 60) -> Outcomes:
        """Per arm of the experiment being served: requests, labels, errors, users, latencies, confusion, and
        latency per time bucket.

        Args:
            bucket_seconds: Width of the latency buckets.

        Raises:
            NoModelLoaded: No champion is loaded (503).
        """
        current = self.models.current
        current.require_champion()
        exp = self.current(current)
        counts = self.store.log.outcomes(exp.experiment_id)
        buckets = self.store.log.latency_buckets(exp.experiment_id, bucket_seconds)
        return views.outcomes(current, exp, counts, self.split(), buckets, bucket_seconds)

    def set_plan(self, plan: ExperimentPlan) -> Experiment:
        """Store the plan of `v{champion}-vs-v{challenger}` before it starts, when it matches the registry's tags.

        Args:
            plan: The plan; its schema constraints were checked on decoding.

        Returns:
            The experiment the plan belongs to (the same plan again is a no-op).

        Raises:
            InvalidPlan: Empty versions, or the same version on both arms (422).
            ModelSourceError: The registry could not be read (503).
            ExperimentConflict: The registry's tags hold no plan or another one, the experiment started under
                another plan, or it ended (409).
        """
        versions = {"champion_version": plan.champion_version, "challenger_version": plan.challenger_version}
        problems = [f"{name} is empty" for name, version in versions.items() if not version.strip()]
        if not problems and plan.champion_version == plan.challenger_version:
            problems.append(f"champion_version and challenger_version are both {plan.champion_version!r}")
        if problems:
            raise InvalidPlan("invalid experiment plan: " + "; ".join(problems))
        try:
            tagged = self.models.source.plan(plan.challenger_version)
        except RouterError:
            raise
        except Exception as exc:
            logger.error(
                "could not read the plan tags of v%s: %s: %s", plan.challenger_version, type(exc).__name__, exc
            )
            raise ModelSourceError(
                f"could not read the plan tags of v{plan.challenger_version} from the registry: {public_reason(exc)}"
            ) from exc
        where = f"{self.model_name} v{plan.challenger_version}"
        if tagged is None:
            raise ExperimentConflict(
                f"{where} carries no {TAG_PLAN_PREFIX}* tags: the registry is the source of truth for the plan, "
                "tag the version before sending it",
                extra={"challenger_version": plan.challenger_version},
            )
        if tagged != plan:
            differences = _differences(plan, tagged)
            raise ExperimentConflict(
                f"the plan differs from the {TAG_PLAN_PREFIX}* tags of {where} (sent != registry): "
                + "; ".join(differences),
                extra={"differences": differences},
            )
        exp_id = experiment_id(plan.champion_version, plan.challenger_version)
        as_json = msgspec.to_builtins(plan)
        before = self.store.experiments.get(exp_id)
        row = self.store.experiments.save_plan(
            model_name=self.model_name,
            experiment_id=exp_id,
            champion_version=plan.champion_version,
            challenger_version=plan.challenger_version,
            plan=as_json,
        )
        if before is None or before.plan != as_json:
            # A new plan brings its split; a repeat of the stored one leaves the split to the admin.
            self.store.config.set_split(plan.ab_split_b)
        logger.info("plan stored for %s, ab_split_b=%s", row.experiment_id, plan.ab_split_b)
        return views.experiment(row)

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
            latest = self.store.experiments.latest_started()
            pair = None if latest is None else (latest.champion_version, latest.challenger_version)
        if pair is None or pair[1] != data.challenger_version:
            which = "no experiment was ever served" if pair is None else f"the experiment is {experiment_id(*pair)}"
            raise ExperimentConflict(
                f"challenger {data.challenger_version!r} is not in the current or most recent experiment ({which})",
                extra={"challenger_version": data.challenger_version},
            )
        exp_id = experiment_id(*pair)
        row = self.store.experiments.end(
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
        return views.experiment(row)

    def _running(self, challenger_version: str) -> tuple[str, ModelSet]:
        """The id of the experiment being served, which must be this challenger's."""
        current = self.models.current
        if current.champion_version is None or current.challenger_version != challenger_version:
            serving = current.challenger_version or "none"
            raise ExperimentConflict(
                f"challenger {challenger_version!r} is not under test (the router serves challenger {serving})",
                extra={"challenger_version": challenger_version, "serving": serving},
            )
        return experiment_id(current.champion_version, challenger_version), current

    def pause(self, data: ExperimentPause) -> Experiment:
        """Pause the experiment of this challenger: the champion serves everyone, the challenger keeps its alias.

        Requests served while paused are logged apart (under the champion's own id) and are no part of the
        comparison. Every replica sees the pause within a second. Pausing a paused experiment is a no-op.

        Raises:
            ExperimentConflict: That challenger is not the one served, or its experiment ended (409).
        """
        exp_id, current = self._running(data.challenger_version)
        assert current.champion_version is not None
        self.store.experiments.assignment(
            model_name=current.model_name,
            experiment_id=exp_id,
            champion_version=current.champion_version,
            challenger_version=data.challenger_version,
        )
        row = self.store.experiments.pause(exp_id, reason=data.reason, at=self.clock())
        logger.warning("experiment %s paused: %s", exp_id, row.pause_reason)
        return views.experiment(row)

    def resume(self, data: ExperimentPause) -> Experiment:
        """Resume the paused experiment of this challenger (a running one is left as it is).

        Raises:
            ExperimentConflict: That challenger is not the one served, or its experiment ended (409).
        """
        exp_id, _ = self._running(data.challenger_version)
        row = self.store.experiments.resume(exp_id, at=self.clock())
        logger.warning("experiment %s resumed: %s", exp_id, data.reason)
        return views.experiment(row)
