"""The MLflow side of the loop: log and register candidates, move aliases, load what an alias points to.

Aliases only, never stages. Names of aliases, tags and artifact paths come from `contracts.registry`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from contracts.api import ExperimentPlan
from contracts.registry import (
    ALIAS_HISTORY_EXPERIMENT,
    CHALLENGER,
    CHAMPION,
    MODEL_ARTIFACT,
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE,
    REQUESTED_BY_LOOP,
    ROW_SOURCE,
    TAG_CLASSES,
    TAG_DECISION,
    TAG_DECISION_ID,
    TAG_ORIGINAL_RUN,
    TAG_PREVIOUS_CHAMPION,
    TAG_REPLACED_BY,
    TAG_TARGET,
    TRAINING_ARTIFACT_DIR,
    TRAINING_FILE,
    alias_missing,
    classes_tag,
    model_uri,
    plan_from_tags,
    registry_missing,
)
from flows.lib import window

REFERENCE_ARTIFACT_PATH = f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"
TRAINING_ARTIFACT_PATH = f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}"

# What unpickling a PyCaret pipeline imports (pycaret.internal.pipeline extends imblearn's Pipeline and
# holds sklearn, category_encoders and pandas objects), pinned to what trained it.
_BASE_REQUIREMENTS = (
    "pycaret",
    "scikit-learn",
    "imbalanced-learn",
    "category-encoders",
    "pandas",
    "numpy",
    "scipy",
    "joblib",
    "cloudpickle",
)
_TAG_VALUE_MAX = 5000


def configure(tracking_uri: str, experiment: str) -> None:
    """Point MLflow at a tracking store and an experiment (call from flows, never at import)."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)


def _client() -> MlflowClient:
    return MlflowClient()


def _distributions_of(obj: Any) -> set[str]:
    """Distributions that provide the classes of a pipeline's steps (e.g. lightgbm, xgboost)."""
    steps = getattr(obj, "steps", None) or []
    objects = [obj, *(step for _, step in steps)]
    modules = {type(o).__module__.split(".")[0] for o in objects}
    # Wrapped estimators keep theirs on `.estimator` / `.transformer`.
    for o in objects:
        for attr in ("estimator", "transformer"):
            inner = getattr(o, attr, None)
            if inner is not None:
                modules.add(type(inner).__module__.split(".")[0])
    owners = metadata.packages_distributions()
    return {dist for module in modules for dist in owners.get(module, [])}


def pip_requirements(pipeline: Any) -> list[str]:
    """Pinned requirements to unpickle `pipeline`: the PyCaret stack plus the estimator's package."""
    names = set(_BASE_REQUIREMENTS) | _distributions_of(pipeline)
    pins = []
    for name in sorted(names, key=str.lower):
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def load_run_document(run_id: str, path: str) -> dict[str, Any]:
    """A JSON document logged in a run (for example a version's drift calibration)."""
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")


def log_check_run(
    *,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    params: dict[str, str],
    texts: dict[str, str],
    documents: dict[str, Any],
    files: dict[str, Path],
) -> tuple[str, str]:
    """One MLflow run of a monitoring check in the current experiment: its figures, its documents and files
    (artifact path -> content or local file). Returns (experiment_id, run_id)."""
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_params(params)
        for artifact, text in texts.items():
            mlflow.log_text(text, artifact)
        for artifact, document in documents.items():
            mlflow.log_dict(document, artifact)
        for folder, local in files.items():
            mlflow.log_artifact(str(local), artifact_path=folder)
    return run.info.experiment_id, run.info.run_id


def log_candidate(
    *,
    pipeline: Any,
    train_data: pd.DataFrame,
    reference: pd.DataFrame,
    target: str,
    model_name: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
    run_name: str,
    tables: dict[str, dict[str, list]] | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
    documents: dict[str, Any] | None = None,
) -> ModelVersion:
    """Log a trained pipeline in one MLflow run and register it as a new version of `model_name`.

    The run holds the params, metrics and tags, the reference data (features and target) as a parquet
    artifact at `REFERENCE_ARTIFACT_DIR/REFERENCE_FILE`, and the model (cloudpickle, with signature and
    input example) under `MODEL_ARTIFACT`. The run goes to the current experiment (see `configure`).

    Args:
        pipeline: The fitted pipeline; takes the raw feature columns.
        train_data: Data it was trained on (features and target): gives the signature and input example.
        reference: The data later drift checks compare against (features and target).
        target: Name of the target column.
        model_name: Registered model name.
        params: Run params.
        metrics: Run metrics.
        tags: Tags set on the run and on the new version.
        run_name: Name of the run.
        tables: Table artifacts (file name to columns), shown as tables in the MLflow UI.
        frames: Data artifacts (artifact path to frame), stored as parquet: the training rows, the gate's holdout.
        documents: JSON artifacts (artifact path to JSON-ready value): how the window was cut, the gate's evidence.

    Returns:
        The registered version (its `run_id` is the run above), with tags set. Note that
        `ModelVersion.version` may be an int: use `str(version.version)`.
    """
    for name, frame in (("train_data", train_data), ("reference", reference)):
        if target not in frame.columns:
            raise ValueError(f"Target column {target!r} is not in {name} (columns: {list(frame.columns)}).")
    tags = dict(tags or {})
    features = train_data.drop(columns=[target])
    predictions = pipeline.predict(features)
    signature = infer_signature(features, predictions)

    with mlflow.start_run(run_name=run_name) as run:
        if params:
            mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags({**tags, TAG_TARGET: target})
        for artifact_file, table in (tables or {}).items():
            mlflow.log_table(data=table, artifact_file=artifact_file)
        for artifact_file, document in (documents or {}).items():
            mlflow.log_dict(document, artifact_file)
        with tempfile.TemporaryDirectory(prefix="driftloop-ref-") as tmp:
            path = Path(tmp) / REFERENCE_FILE
            reference.reset_index(drop=True).to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=REFERENCE_ARTIFACT_DIR)
            for artifact_path, frame in (frames or {}).items():
                folder, _, name = artifact_path.rpartition("/")
                (Path(tmp) / "frames").mkdir(exist_ok=True)
                path = Path(tmp) / "frames" / name
                frame.reset_index(drop=True).to_parquet(path, index=False)
                mlflow.log_artifact(str(path), artifact_path=folder or None)
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            signature=signature,
            input_example=features.head(3),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            pip_requirements=pip_requirements(pipeline),
            registered_model_name=model_name,
        )
        version = str(info.registered_model_version)

    # The classes the model can predict: the router refuses labels outside them.
    tag_version(model_name, version, {**tags, TAG_TARGET: target, TAG_CLASSES: classes_tag(train_data[target])})
    result = _client().get_model_version(model_name, version)
    if result.run_id != run.info.run_id:  # registration must point at the run that holds the reference
        raise RuntimeError(f"{model_name} v{version} points at run {result.run_id}, not {run.info.run_id}.")
    return result


def get_version(model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to; None when the model or the alias does not exist."""
    client = _client()
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if registry_missing(exc):  # no such model
            return None
        # A missing alias is INVALID_PARAMETER_VALUE, like a malformed alias: tell them apart.
        if alias_missing(exc):
            try:
                aliases = client.get_registered_model(model_name).aliases
            except MlflowException as again:
                if registry_missing(again):
                    return None
                raise exc from again
            if alias not in aliases:
                return None
        raise


def set_alias(model_name: str, alias: str, version: str | int) -> None:
    """Point `alias` at `version` (one write: it moves from any other version)."""
    _client().set_registered_model_alias(model_name, alias, str(version))


def delete_alias(model_name: str, alias: str) -> None:
    """Remove `alias`; nothing happens when it (or the model) does not exist."""
    try:
        _client().delete_registered_model_alias(model_name, alias)
    except MlflowException as exc:
        if not registry_missing(exc):
            raise


def tag_version(model_name: str, version: str | int, tags: dict[str, str]) -> None:
    """Set tags on one model version (values are truncated to MLflow's limit)."""
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value)[:_TAG_VALUE_MAX])


def load_reference(model_name: str, alias: str) -> pd.DataFrame:
    """The reference data logged with the version that `alias` points to.

    Raises:
        LookupError: When the alias (or model) does not exist.
    """
    version = get_version(model_name, alias)
    if version is None:
        raise LookupError(f"{model_name} has no version aliased {alias!r}.")
    with tempfile.TemporaryDirectory(prefix="driftloop-ref-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=REFERENCE_ARTIFACT_PATH, dst_path=tmp
        )
        return pd.read_parquet(local)


def load_training(run_id: str) -> pd.DataFrame | None:
    """The training rows logged with a run (`TRAINING_ARTIFACT_DIR/TRAINING_FILE`), or None when it has none.

    Versions registered before training rows were kept have none.
    """
    listed = {Path(a.path).name for a in _client().list_artifacts(run_id, TRAINING_ARTIFACT_DIR)}
    if TRAINING_FILE not in listed:
        return None
    with tempfile.TemporaryDirectory(prefix="driftloop-train-") as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=TRAINING_ARTIFACT_PATH, dst_path=tmp)
        return pd.read_parquet(local)


def load_history(model_name: str, alias: str) -> window.History:
    """The original training rows and the row ids the aliased version was trained on, for the next training window.

    The original rows are in the run its `TAG_ORIGINAL_RUN` tag names, or in its own run when it has none (a
    bootstrap). A version registered before training rows were kept has no record: its reference stands in for the
    original data, and every request logged before it was registered counts as seen by it (none of them may judge it).

    Raises:
        LookupError: When the alias (or model) does not exist.
    """
    version = get_version(model_name, alias)
    if version is None:
        raise LookupError(f"{model_name} has no version aliased {alias!r}.")
    trained_on = load_training(version.run_id)
    if trained_on is None:
        registered = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
        return window.History(
            rows=window.original_rows(load_reference(model_name, alias), prefix="reference"),
            run_id=version.run_id,
            seen_ids=frozenset(),
            seen_until=registered,
            note=f"v{version.version} has no training record: its reference stands in for the original data, and "
            f"requests logged before {registered.isoformat()} count as seen by it",
        )
    original_run = version.tags.get(TAG_ORIGINAL_RUN) or version.run_id
    original = trained_on if original_run == version.run_id else load_training(original_run)
    note = ""
    if original is None:
        note = f"the original run {original_run} has no training record: v{version.version}'s original rows stand in"
        original, original_run = trained_on, version.run_id
    original = original[original[ROW_SOURCE] == window.ORIGINAL].reset_index(drop=True)
    return window.History(rows=original, run_id=original_run, seen_ids=window.seen_rows(trained_on), note=note)


def load_pipeline(model_name: str, alias: str) -> Any:
    """The fitted pipeline that `alias` points to (`models:/<name>@<alias>`)."""
    return mlflow.sklearn.load_model(model_uri(model_name, alias))


@dataclass(frozen=True)
class AliasMove:
    """One move of a registry alias and why it happened."""

    model_name: str
    alias: str
    from_version: str | None
    to_version: str | None
    """None when the alias was removed."""
    reason: str
    decision_id: str = ""
    loop_id: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    requested_by: str = REQUESTED_BY_LOOP
    """Who asked: the loop itself, or the person behind a manual control."""


def record_move(move: AliasMove) -> str:
    """Append a move to the alias history (one MLflow run per move, never edited); returns the run id."""
    client = _client()
    experiment = client.get_experiment_by_name(ALIAS_HISTORY_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(ALIAS_HISTORY_EXPERIMENT)
    tags = {
        "model_name": move.model_name,
        "alias": move.alias,
        "from_version": move.from_version or "",
        "to_version": move.to_version or "",
        "decision_id": move.decision_id,
        "loop_id": move.loop_id,
        "requested_by": move.requested_by,
        "reason": move.reason[:_TAG_VALUE_MAX],
    }
    run = client.create_run(
        experiment_id,
        run_name=f"{move.model_name}@{move.alias}: {move.from_version or '-'} -> {move.to_version or '-'}",
        tags=tags,
    )
    client.log_text(run.info.run_id, json.dumps(asdict(move), indent=2, default=str), "move.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def alias_history(model_name: str) -> list[dict[str, str]]:
    """Every recorded alias move of a model, oldest first."""
    client = _client()
    experiment = client.get_experiment_by_name(ALIAS_HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.model_name = '{model_name}'",
        order_by=["attributes.start_time ASC"],
        max_results=5000,
    )
    keys = ("alias", "from_version", "to_version", "decision_id", "loop_id", "requested_by", "reason")
    return [{k: run.data.tags.get(k, "") for k in keys} | {"run_id": run.info.run_id} for run in runs]


def _recorded_move(model_name: str, alias: str, decision_id: str) -> dict[str, str] | None:
    """The history record of this decision's move of `alias`, if an earlier try wrote it."""
    return next((m for m in alias_history(model_name) if m["alias"] == alias and m["decision_id"] == decision_id), None)


def move_alias(
    model_name: str,
    alias: str,
    version: str | int | None,
    *,
    reason: str,
    decision_id: str = "",
    loop_id: str = "",
    evidence: dict[str, Any] | None = None,
    requested_by: str = REQUESTED_BY_LOOP,
) -> str | None:
    """Point `alias` at `version` (or remove it when `version` is None) and record the move.

    A move made by a decision is recorded first and then made, and a retry finds the record by decision id:
    a failure between the two never loses the record nor writes it twice.

    Returns:
        The version the alias pointed to before, or None.
    """
    target = None if version is None else str(version)
    earlier = _recorded_move(model_name, alias, decision_id) if decision_id else None
    if earlier is not None:
        previous = earlier["from_version"] or None
    else:
        current = get_version(model_name, alias)
        previous = str(current.version) if current is not None else None
        if previous == target:
            return previous
        move = AliasMove(
            model_name, alias, previous, target, reason, decision_id, loop_id, evidence or {}, requested_by
        )
        if decision_id:
            record_move(move)
    if target is None:
        delete_alias(model_name, alias)
    else:
        set_alias(model_name, alias, target)
    if not decision_id and earlier is None:
        record_move(move)
    return previous


def promote(
    model_name: str,
    version: str | int,
    *,
    reason: str,
    decision_id: str = "",
    loop_id: str = "",
    evidence: dict[str, Any] | None = None,
    requested_by: str = REQUESTED_BY_LOOP,
) -> str | None:
    """Make `version` the champion and end the A/B test.

    Moves `champion` in a single alias write (the router never sees a model without a champion), tags
    the new champion with the version it replaced and the decision, tags the old champion with its
    successor (it stays registered for a rollback), then deletes `challenger`. Both moves are recorded
    in the alias history. Idempotent: promoting the current champion again changes nothing.

    Args:
        model_name: Registered model name.
        version: The version to promote.
        reason: Why, recorded in the decision tag and the history.
        decision_id: The decision that moved it.
        loop_id: The turn of the loop the version came from.
        evidence: What the decision rested on (kept with the history record).
        requested_by: Who asked (the loop, or the person behind a manual promotion).

    Returns:
        The version that was champion before, or None when there was none.
    """
    version = str(version)
    client = _client()
    target = client.get_model_version(model_name, version)  # fail before touching aliases if it doesn't exist
    current = get_version(model_name, CHAMPION)
    # ModelVersion.version is an int from some calls and a str from others: compare as str.
    if current is not None and str(current.version) == version:
        # Already champion (a retry, or a repeat): the tags were written before the alias moved.
        previous = target.tags.get(TAG_PREVIOUS_CHAMPION) or None
        if decision_id and target.tags.get(TAG_DECISION_ID) != decision_id:
            return previous  # promoted earlier by another decision: nothing to do
    else:
        previous = str(current.version) if current is not None else None
        # Tags first: whatever fails after this, a retry still knows what the move replaced.
        tags = {TAG_DECISION: f"promoted: {reason}", TAG_DECISION_ID: decision_id}
        if previous is not None:
            tags[TAG_PREVIOUS_CHAMPION] = previous
            tag_version(model_name, previous, {TAG_REPLACED_BY: version, TAG_DECISION_ID: decision_id})
        tag_version(model_name, version, tags)
    moved = {"decision_id": decision_id, "loop_id": loop_id, "evidence": evidence, "requested_by": requested_by}
    move_alias(model_name, CHAMPION, version, reason=reason, **moved)
    # Any experiment was against the old champion: it ends with the promotion.
    move_alias(model_name, CHALLENGER, None, reason=f"promoted to {CHAMPION}: {reason}", **moved)
    return previous


def retire_challenger(
    model_name: str,
    *,
    reason: str,
    decision_id: str = "",
    loop_id: str = "",
    evidence: dict[str, Any] | None = None,
    requested_by: str = REQUESTED_BY_LOOP,
) -> str | None:
    """Stop testing the challenger: remove its alias, tag it with the decision and record the move.

    Returns:
        The version that was challenger, or None when there was none.
    """
    current = get_version(model_name, CHALLENGER)
    if current is None:
        return None
    tag_version(model_name, current.version, {TAG_DECISION: f"rolled back: {reason}", TAG_DECISION_ID: decision_id})
    return move_alias(
        model_name, CHALLENGER, None, reason=reason, decision_id=decision_id, loop_id=loop_id, evidence=evidence,
        requested_by=requested_by,
    )  # fmt: skip


def rollback_champion(
    model_name: str,
    *,
    reason: str,
    requested_by: str,
    to_version: str | int | None = None,
    decision_id: str = "",
    loop_id: str = "",
) -> tuple[str, str]:
    """Move `champion` back to the version it replaced (or to `to_version`), audited like every move.

    The current champion is tagged with the decision; a running experiment ends (its challenger was measured
    against the champion that is being rolled back). The version rolled back to must be registered.

    Args:
        model_name: Registered model name.
        reason: Why, recorded in the tags and the alias history.
        requested_by: Who asked.
        to_version: The version to serve; None: the one the current champion replaced (`TAG_PREVIOUS_CHAMPION`).
        decision_id: Identifies this rollback (its history records carry it; a retry finds them).
        loop_id: The turn of the loop the rollback belongs to, if any.

    Returns:
        (the champion before, the champion now).

    Raises:
        LookupError: There is no champion, no previous version to return to, or `to_version` is not registered.
    """
    client = _client()
    current = get_version(model_name, CHAMPION)
    if current is None:
        raise LookupError(f"{model_name} has no {CHAMPION} to roll back")
    current_version = str(current.version)
    target = str(to_version) if to_version is not None else current.tags.get(TAG_PREVIOUS_CHAMPION)
    if not target:
        raise LookupError(
            f"{model_name} v{current_version} replaced no earlier champion (no {TAG_PREVIOUS_CHAMPION} tag): "
            "name the version to roll back to"
        )
    try:
        client.get_model_version(model_name, target)
    except MlflowException as exc:
        if registry_missing(exc):
            raise LookupError(f"{model_name} has no version {target}") from exc
        raise
    if target == current_version:
        return current_version, target
    tag_version(model_name, current_version, {TAG_DECISION: f"rolled back: {reason}", TAG_DECISION_ID: decision_id})
    moved = {"decision_id": decision_id, "loop_id": loop_id, "requested_by": requested_by}
    move_alias(model_name, CHAMPION, target, reason=f"rollback: {reason}", **moved)
    move_alias(model_name, CHALLENGER, None, reason=f"{CHAMPION} rolled back to v{target}: {reason}", **moved)
    return current_version, target


def aliases_now(model_name: str) -> dict[str, str | None]:
    """Where `champion` and `challenger` point right now (version strings, None when unset)."""
    found = {alias: get_version(model_name, alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: None if v is None else str(v.version) for alias, v in found.items()}


def moved_since(seen: dict[str, str | None], now: dict[str, str | None]) -> str | None:
    """Why a move planned on `seen` aliases must not go ahead on `now`, or None when neither alias moved.

    Args:
        seen: Alias to version (None: unset) when the run decided; aliases it does not name are not checked.
        now: Alias to version as read under the registry lock, just before the move.

    Returns:
        None, or which alias another run moved meanwhile.
    """
    changed = [
        f"{alias} {seen[alias] or '-'} -> {now.get(alias) or '-'}" for alias in seen if seen[alias] != now.get(alias)
    ]
    return None if not changed else f"another run moved the aliases since this one decided ({', '.join(changed)})"


def plan_of(model_name: str, version: str | int) -> ExperimentPlan | None:
    """The experiment plan kept as `driftloop.plan.*` tags on a version, or None when it has none."""
    return plan_from_tags(_client().get_model_version(model_name, str(version)).tags)
