"""Every alias move is recorded: version tags plus an append-only history of MLflow runs."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from contracts.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_DECISION,
    TAG_DECISION_ID,
    TAG_PREVIOUS_CHAMPION,
    TAG_REPLACED_BY,
)
from flows.lib import registry

pytestmark = pytest.mark.usefixtures("configured_registry")


@pytest.fixture(scope="module")
def model(trained, iris):
    """A model with three versions: v1 champion, v2 and v3 unaliased."""
    name = "HistoryModel"
    for _ in range(3):
        registry.log_candidate(
            pipeline=trained.pipeline, train_data=iris, reference=iris, target="species", model_name=name,
            params={}, metrics={}, run_name="history",
        )  # fmt: skip
    registry.move_alias(name, CHAMPION, "1", reason="bootstrap", loop_id="loop-0")
    return name


def test_promotion_moves_champion_once_keeps_the_old_one_tagged_and_records_both_moves(model):
    registry.move_alias(model, CHALLENGER, "2", reason="passed the gate", loop_id="loop-1")
    previous = registry.promote(
        model, "2", reason="CS above 0", decision_id="d-1", loop_id="loop-1", evidence={"d_hat": 0.3}
    )
    client = MlflowClient()
    assert previous == "1"
    assert str(client.get_model_version_by_alias(model, CHAMPION).version) == "2"
    assert CHALLENGER not in client.get_registered_model(model).aliases
    new, old = client.get_model_version(model, "2").tags, client.get_model_version(model, "1").tags
    assert (new[TAG_PREVIOUS_CHAMPION], new[TAG_DECISION], new[TAG_DECISION_ID]) == ("1", "promoted: CS above 0", "d-1")
    assert (old[TAG_REPLACED_BY], old[TAG_DECISION_ID]) == ("2", "d-1")
    history = [
        (h["alias"], h["from_version"], h["to_version"], h["decision_id"]) for h in registry.alias_history(model)
    ]
    assert history == [
        (CHAMPION, "", "1", ""),
        (CHALLENGER, "", "2", ""),
        (CHAMPION, "1", "2", "d-1"),
        (CHALLENGER, "2", "", "d-1"),
    ]


def test_promoting_the_champion_again_changes_nothing(model):
    before = len(registry.alias_history(model))
    assert registry.promote(model, "2", reason="again", decision_id="d-2") == "1"
    assert len(registry.alias_history(model)) == before


def test_retiring_the_challenger_removes_its_alias_tags_it_and_records_the_move(model):
    registry.move_alias(model, CHALLENGER, "3", reason="passed the gate", loop_id="loop-2")
    assert registry.retire_challenger(model, reason="guardrail breached", decision_id="d-3", loop_id="loop-2") == "3"
    client = MlflowClient()
    assert CHALLENGER not in client.get_registered_model(model).aliases
    assert client.get_model_version(model, "3").tags[TAG_DECISION] == "rolled back: guardrail breached"
    last = registry.alias_history(model)[-1]
    assert (last["alias"], last["from_version"], last["to_version"], last["reason"], last["loop_id"]) == (
        CHALLENGER, "3", "", "guardrail breached", "loop-2",
    )  # fmt: skip
    assert registry.retire_challenger(model, reason="nothing to retire") is None


def test_a_promotion_retried_after_a_failed_alias_write_keeps_one_record_and_its_tags(model, monkeypatch):
    registry.move_alias(model, CHALLENGER, "3", reason="passed the gate", loop_id="loop-3")
    real_set_alias, calls = registry.set_alias, []

    def flaky(name, alias, version):
        calls.append(alias)
        if len(calls) == 1:
            raise ConnectionError("registry went away")
        real_set_alias(name, alias, version)

    monkeypatch.setattr(registry, "set_alias", flaky)
    with pytest.raises(ConnectionError):
        registry.promote(model, "3", reason="CS above 0", decision_id="d-4", loop_id="loop-3")
    assert registry.promote(model, "3", reason="CS above 0", decision_id="d-4", loop_id="loop-3") == "2"

    client = MlflowClient()
    assert str(client.get_model_version_by_alias(model, CHAMPION).version) == "3"
    assert client.get_model_version(model, "3").tags[TAG_PREVIOUS_CHAMPION] == "2"
    moves = [(m["alias"], m["from_version"], m["to_version"]) for m in registry.alias_history(model)
             if m["decision_id"] == "d-4"]  # fmt: skip
    assert moves == [(CHAMPION, "2", "3"), (CHALLENGER, "3", "")]
