"""The demo's summary names the look that ended the loop it followed, whatever arrived after it."""

from contracts import events
from deployments.demo import Timeline, Watcher


def look(decision: str, decision_id: str, loop_id: str, challenger: str) -> dict:
    return {
        "model_name": "IrisClassifier",
        "decision_id": decision_id,
        "loop_id": loop_id,
        "experiment_id": f"v1-vs-v{challenger}",
        "decision": decision,
        "champion_version": "1",
        "challenger_version": challenger,
        "reason": decision.lower(),
    }


def test_the_promoting_look_is_the_decision_even_when_the_next_loop_looked_after_it():
    watcher = Watcher(Timeline(), "IrisClassifier")
    promote = look("PROMOTE", "d-promote", "loop-a", "2")
    watcher.handle(events.EXPERIMENT_DECIDED, "", look("CONTINUE", "d-early", "loop-a", "2"))
    watcher.handle(events.EXPERIMENT_DECIDED, "", promote)
    watcher.handle(events.MODEL_PROMOTED, "", promote)
    # The next loop's first look (its challenger is newer) arrives before the demo stops.
    watcher.handle(events.EXPERIMENT_DECIDED, "", look("CONTINUE", "d-next", "loop-b", "3"))

    chosen = watcher.deciding_look()
    assert (chosen["decision"], chosen["decision_id"], chosen["loop_id"]) == ("PROMOTE", "d-promote", "loop-a")
    assert len(watcher.decisions) == 3


def test_without_the_promoting_look_the_promotion_itself_is_the_decision():
    watcher = Watcher(Timeline(), "IrisClassifier")
    watcher.handle(events.EXPERIMENT_DECIDED, "", look("CONTINUE", "d-next", "loop-b", "3"))
    watcher.handle(events.MODEL_PROMOTED, "", look("PROMOTE", "d-promote", "loop-a", "2"))
    assert watcher.deciding_look()["decision_id"] == "d-promote"


def test_without_a_promotion_the_last_look_is_the_decision():
    watcher = Watcher(Timeline(), "IrisClassifier")
    assert watcher.deciding_look() is None
    watcher.handle(events.EXPERIMENT_DECIDED, "", look("CONTINUE", "d-1", "loop-a", "2"))
    watcher.handle(events.EXPERIMENT_DECIDED, "", look("CONTINUE", "d-2", "loop-a", "2"))
    assert watcher.deciding_look()["decision_id"] == "d-2"
