"""Monte Carlo check of the A/B decision on realistic traffic: users with several correlated requests, failures,
labels missing not at random, SRM, hourly looks up to the maximum duration, and the post-promotion watch.

One harness, `simulate()`, serves both the CI tests (a few hundred experiments) and this benchmark: it plans each
experiment with the same `make_plan` the retrain flow uses (the design effect estimated from a period of the
champion's traffic), draws the router's per-arm counts and per-user sums look by look, sends every look through the
same `decide()` the A/B flow uses, and follows the flow's handling of each decision (PROMOTE and ROLLBACK end it;
INVALID pauses it, and a paused experiment is rolled back at its maximum duration). Run it with
`uv run python -m bench.ab_simulation [--experiments N]`.

Traffic model (one look per hour, `looks` looks = the maximum duration in hours):
- each look, new users arrive, each assigned to the challenger with probability `split` (0.5 planned, `srm_split`
  when assignment is broken); a user sends a geometric number of requests (mean `mean_requests`) within the look;
- each user has an accuracy drawn from a Beta around the arm's accuracy with intra-user correlation `icc`
  (ICC 0: every user at the arm's accuracy);
- each request fails with the arm's error rate (a failure is a miss in the primary metric), an answered request is
  labelled with the arm's label rate, and is right with the user's accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.stats import binomtest

from contracts.api import CONTINUE, INVALID, PROMOTE, ArmOutcome, ExperimentPlan, UserSums
from contracts.api import Arm as ArmName
from contracts.decision import WatchPromise
from contracts.registry import CHAMPION
from flows.lib.ab_plan import PlanInputs, make_plan
from flows.lib.ab_policy import ArmEvidence, Evidence, decide, promise_of, watch

RESULTS = Path(__file__).resolve().parent / "results" / "ab_simulation.json"


@dataclass(frozen=True)
class Rate:
    """A proportion k/n with its confidence interval."""

    k: int
    n: int
    rate: float
    low: float
    high: float
    method: str

    def __str__(self) -> str:
        return f"{self.rate:.4f} [{self.low:.4f}, {self.high:.4f}]"

    def as_dict(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci_low": self.low, "ci_high": self.high}


def rate(k: int, n: int, *, confidence: float = 0.95, method: Literal["wilson", "exact"] = "wilson") -> Rate:
    """k/n with a Wilson (default) or Clopper-Pearson ("exact") interval, from `scipy.stats.binomtest`."""
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return Rate(int(k), int(n), k / n, float(ci.low), float(ci.high), method)


@dataclass(frozen=True)
class Arm:
    """One arm's truth."""

    accuracy: float
    error_rate: float = 0.002
    label_rate: float = 0.5


@dataclass(frozen=True)
class Scenario:
    """The truth of one simulated experiment."""

    champion: Arm
    challenger: Arm
    icc: float = 0.0
    mean_requests: float = 5.0
    split: float = 0.5
    """The share of users actually assigned to the challenger (the plan says 0.5)."""
    looks: int = 72
    plan_look: int = 24
    """The look by which the planned sample should be reached (sets the users per look)."""


@dataclass
class Counts:
    """The cumulative counts of one arm, as the router reports them."""

    users: int = 0
    labelled_users: int = 0
    requests: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(6, dtype=np.int64))
    """users with a scored request, sum n, sum x, sum n^2, sum x^2, sum n x."""

    def add(self, rng: np.random.Generator, count: int, arm: Arm, icc: float, mean_requests: float) -> None:
        """Draw `count` new users of this arm and add their requests."""
        if count == 0:
            return
        m = rng.geometric(1 / mean_requests, size=count)
        if icc > 0:
            k = (1 - icc) / icc
            acc = rng.beta(arm.accuracy * k, (1 - arm.accuracy) * k, size=count)
        else:
            acc = np.full(count, arm.accuracy)
        failed = rng.binomial(m, arm.error_rate)
        answered = m - failed
        labelled = rng.binomial(answered, arm.label_rate)
        correct = rng.binomial(labelled, acc)
        n = labelled + failed
        scored = n > 0
        self.users += count
        self.labelled_users += int((labelled > 0).sum())
        self.requests += int(answered.sum())
        self.errors += int(failed.sum())
        self.labelled += int(labelled.sum())
        self.correct += int(correct.sum())
        n, x = n[scored], correct[scored]
        self.sums += np.array([len(n), n.sum(), x.sum(), (n * n).sum(), (x * x).sum(), (n * x).sum()])

    def user_sums(self) -> UserSums | None:
        k, sn, sx, snn, sxx, snx = (int(v) for v in self.sums)
        if k == 0:
            return None
        return UserSums(users=k, sum_n=sn, sum_x=sx, sum_nn=snn, sum_xx=sxx, sum_nx=snx)

    def evidence(self, version: str) -> ArmEvidence:
        return ArmEvidence(
            version=version, requests=self.requests, errors=self.errors, labelled=self.labelled, correct=self.correct,
            users=self.users, labelled_users=self.labelled_users, user_sums=self.user_sums(),
        )  # fmt: skip

    def outcome(self, arm: ArmName, version: str, hours: float) -> ArmOutcome:
        return ArmOutcome(
            arm=arm, model_version=version, requests=self.requests, labelled=self.labelled, correct=self.correct,
            incorrect=self.labelled - self.correct, errors=self.errors, users=self.users,
            labelled_users=self.labelled_users, user_sums=self.user_sums(),
            first_request_at=_at(0),
            last_request_at=_at(hours),
        )  # fmt: skip


def _at(hours: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours)


def scored_per_user(arm: Arm, mean_requests: float) -> float:
    """Expected scored outcomes (labelled answered + failed) per user."""
    return mean_requests * ((1 - arm.error_rate) * arm.label_rate + arm.error_rate)


def plan_for(scenario: Scenario, rng: np.random.Generator, *, alpha: float, power: float, mde: float) -> ExperimentPlan:
    """The plan the retrain flow would make: `make_plan` on a day of the champion's traffic."""
    pre = Counts()
    pre.add(rng, 3000, scenario.champion, scenario.icc, scenario.mean_requests)
    baseline = pre.sums[2] / pre.sums[1]
    inputs = PlanInputs(
        champion_version="1", challenger_version="2", baseline=float(min(baseline, 1 - mde - 0.005)), alpha=alpha,
        power=power, mde=mde, mde_relative=False, ab_split_b=0.5, max_duration_hours=float(scenario.looks),
        srm_threshold=0.005, guardrail_error_margin=0.005, guardrail_error_margin_relative=0.25,
        guardrail_latency_margin=0.5, guardrail_latency_slack_ms=20.0, watch_hours=float(scenario.looks),
    )  # fmt: skip
    return make_plan(inputs, pre.outcome(CHAMPION, "1", 24.0))


@dataclass
class SimResult:
    """Per experiment: the first non-CONTINUE decision, its rule and look, and the planned look."""

    scenario: Scenario
    plan: ExperimentPlan
    users_per_look: int
    decisions: np.ndarray
    rules: np.ndarray
    looks: np.ndarray
    restored: np.ndarray | None = None
    """For watch simulations: whether the watch restored the previous champion within its period."""

    @property
    def experiments(self) -> int:
        return len(self.decisions)

    def count(self, decision: str, *, by_look: int | None = None, rule: str | None = None) -> int:
        hit = self.decisions == decision
        if by_look is not None:
            hit &= self.looks <= by_look
        if rule is not None:
            hit &= self.rules == rule
        return int(hit.sum())

    def rate(self, decision: str, **kw) -> Rate:
        return rate(self.count(decision, **kw), self.experiments)


def users_per_look(scenario: Scenario, plan: ExperimentPlan) -> int:
    """New users per look (both arms) that reach the planned sample per arm by `plan_look`."""
    per_user = min(scored_per_user(scenario.champion, scenario.mean_requests),
                   scored_per_user(scenario.challenger, scenario.mean_requests))  # fmt: skip
    return int(np.ceil(plan.min_samples_per_arm / per_user / scenario.plan_look / 0.5))


def run_experiment(
    scenario: Scenario, plan: ExperimentPlan, users: int, rng: np.random.Generator
) -> tuple[str, str, int, tuple[Counts, Counts], object]:
    """One experiment through `decide()` look by look, handled as the flow handles each decision."""
    a, b = Counts(), Counts()
    paused = False
    first: tuple[str, str, int] | None = None
    decision = None
    for look in range(1, scenario.looks + 1):
        if not paused:
            to_b = rng.binomial(users, scenario.split)
            a.add(rng, users - to_b, scenario.champion, scenario.icc, scenario.mean_requests)
            b.add(rng, to_b, scenario.challenger, scenario.icc, scenario.mean_requests)
        evidence = Evidence(
            champion=a.evidence("1"), challenger=b.evidence("2"), plan=plan, elapsed_hours=float(look), paused=paused
        )
        decision = decide(evidence, reference_test=False)
        if decision.decision == CONTINUE:
            continue
        if first is None:
            first = (decision.decision, decision.rule, look)
        if decision.decision == INVALID:
            paused = True  # the flow pauses it; counts stop growing; it is rolled back at the maximum duration
            continue
        break
    if first is None:
        first = (CONTINUE, "undecided", scenario.looks)
    return (*first, (a, b), decision)


def simulate(scenario: Scenario, *, experiments: int, seed: int, alpha: float = 0.05, power: float = 0.8,
             mde: float = 0.05) -> SimResult:  # fmt: skip
    """Run `experiments` experiments of one scenario."""
    rng = np.random.default_rng(seed)
    plan = plan_for(scenario, rng, alpha=alpha, power=power, mde=mde)
    users = users_per_look(scenario, plan)
    decisions, rules, looks = [], [], []
    for _ in range(experiments):
        decision, rule, look, _, _ = run_experiment(scenario, plan, users, rng)
        decisions.append(decision)
        rules.append(rule)
        looks.append(look)
    return SimResult(scenario, plan, users, np.array(decisions), np.array(rules), np.array(looks))


def planned_look(result: SimResult) -> int:
    """The look by which the planned sample per arm is expected."""
    return result.scenario.plan_look


def simulate_watch(
    scenario: Scenario, *, experiments: int, seed: int, lucky: bool, alpha: float = 0.05, power: float = 0.8,
    mde: float = 0.05, max_tries: int = 60_000,
) -> SimResult:  # fmt: skip
    """Promotions followed by the post-promotion watch.

    `lucky`: the challenger is no better (true lift 0) but promoted by chance, forced: experiments are drawn until
    one's look at the planned sample says PROMOTE (a rare event under no lift, so many draws per promotion); the
    watch then sees the new champion's true accuracy on all traffic for the watch period. Otherwise (true winners)
    the experiments of the scenario run as usual and the watch follows each PROMOTE.
    """
    rng = np.random.default_rng(seed)
    plan = plan_for(scenario, rng, alpha=alpha, power=power, mde=mde)
    users = users_per_look(scenario, plan)
    restored, decisions, rules, looks = [], [], [], []
    tries = 0
    while len(restored) < experiments and tries < max_tries:
        tries += 1
        if lucky:
            a, b = Counts(), Counts()
            for counts, truth in ((a, scenario.champion), (b, scenario.challenger)):
                counts.add(rng, int(users * 0.5 * scenario.plan_look), truth, scenario.icc, scenario.mean_requests)
            evidence = Evidence(champion=a.evidence("1"), challenger=b.evidence("2"), plan=plan,
                                elapsed_hours=float(scenario.plan_look))  # fmt: skip
            decision = decide(evidence, reference_test=False)
            if decision.decision != PROMOTE:
                continue
            look = scenario.plan_look
        else:
            outcome, rule, look, _, decision = run_experiment(scenario, plan, users, rng)
            if outcome != PROMOTE:
                continue
        promise = promise_of(decision, float(scenario.looks), _at(look))
        decisions.append(PROMOTE)
        rules.append("better")
        looks.append(look)
        restored.append(_watch(promise, scenario.challenger, scenario, users, rng))
    return SimResult(scenario, plan, users, np.array(decisions), np.array(rules), np.array(looks),
                     restored=np.array(restored, dtype=bool))  # fmt: skip


def _watch(promise: WatchPromise, truth: Arm, scenario: Scenario, users: int, rng: np.random.Generator) -> bool:
    """The watch of a new champion with accuracy `truth`, serving all users, one look per hour for its period."""
    served = Counts()
    for hour in range(1, int(promise.period_hours) + 1):
        served.add(rng, users, truth, scenario.icc, scenario.mean_requests)
        result = watch(promise, served.user_sums(), float(hour))
        if result.verdict == "REGRESSION":
            return True
        if result.verdict == "DONE":
            return False
    return False


# --- the benchmark -------------------------------------------------------------------------------------------------

BASE = Arm(accuracy=0.80)
BETTER = Arm(accuracy=0.85)


def scenarios(experiments: int, seed: int, *, watch_experiments: int | None = None) -> dict:
    """Every scenario of the issue, with its target."""
    watch_n = watch_experiments or max(50, experiments // 10)
    report: dict = {"scenarios": []}

    def add(name: str, result: SimResult, outcome: str, value: Rate, target: str, ok: bool) -> None:
        report["scenarios"].append({
            "scenario": name, "outcome": outcome, "rate": value.as_dict(), "target": target, "meets_target": ok,
            "planned_per_arm": result.plan.min_samples_per_arm, "design_effect": result.plan.design_effect,
            "users_per_look": result.users_per_look, "experiments": result.experiments,
        })  # fmt: skip
        print(f"{name:48s} {outcome:40s} {value}  target {target}  {'ok' if ok else 'MISSED'}", flush=True)

    for i, icc in enumerate((0.0, 0.1, 0.3)):
        aa = simulate(Scenario(BASE, BASE, icc=icc), experiments=experiments, seed=seed + i)
        promoted = rate(aa.count(PROMOTE), aa.experiments, method="exact")
        add(f"A/A, ICC {icc}", aa, "false PROMOTE (72 looks)", promoted, "<= 0.025", promoted.high <= 0.025)
        invalid = rate(aa.count(INVALID), aa.experiments, method="exact")
        add(f"A/A, ICC {icc}", aa, "false INVALID (72 looks)", invalid, "<= 0.005", invalid.rate <= 0.005)
        ab = simulate(Scenario(BASE, BETTER, icc=icc), experiments=experiments, seed=seed + 10 + i)
        by_plan = ab.rate(PROMOTE, by_look=ab.scenario.plan_look)
        add(f"A/B at the MDE, ICC {icc}", ab, "PROMOTE by the planned sample", by_plan, ">= 0.80",
            by_plan.rate >= 0.80)  # fmt: skip
    mnar = simulate(Scenario(BASE, Arm(0.80, label_rate=0.45), icc=0.1), experiments=experiments, seed=seed + 20)
    promoted = rate(mnar.count(PROMOTE), mnar.experiments, method="exact")
    add("labels MNAR (challenger 10% fewer), equal models", mnar, "false PROMOTE", promoted, "<= 0.025",
        promoted.high <= 0.025)  # fmt: skip
    errors = simulate(Scenario(Arm(0.80, error_rate=0.03), Arm(0.80, error_rate=0.045), icc=0.1),
                      experiments=experiments, seed=seed + 21)  # fmt: skip
    promoted = errors.rate(PROMOTE)
    add("challenger 1.5x the error rate, equal accuracy", errors, PROMOTE, promoted, "<= 0.05",
        promoted.rate <= 0.05)  # fmt: skip
    srm = simulate(Scenario(BASE, BASE, icc=0.1, split=0.47), experiments=experiments, seed=seed + 22)
    flagged = srm.rate(INVALID)
    add("SRM: 0.47 served vs 0.5 planned", srm, INVALID, flagged, ">= 0.99", flagged.rate >= 0.99)
    # Detecting a 3-point skew takes users: the same skew at 6x the traffic (the plan reached by look 4).
    busy = simulate(Scenario(BASE, BASE, icc=0.1, split=0.47, plan_look=4), experiments=experiments, seed=seed + 23)
    flagged = busy.rate(INVALID)
    add("SRM: 0.47 vs 0.5, 6x the traffic", busy, INVALID, flagged, ">= 0.99", flagged.rate >= 0.99)
    lucky = simulate_watch(Scenario(BASE, BASE, icc=0.1), experiments=watch_n, seed=seed + 30, lucky=True)
    back = rate(int(lucky.restored.sum()), len(lucky.restored))
    add("lucky promotion (lift 0, forced), watch", lucky, "previous champion restored in the period", back,
        ">= 0.80", back.rate >= 0.80)  # fmt: skip
    winners = simulate_watch(Scenario(BASE, BETTER, icc=0.1), experiments=watch_n, seed=seed + 31, lucky=False)
    wrong = rate(int(winners.restored.sum()), len(winners.restored))
    add("true winner (lift = MDE) promoted, watch", winners, "wrongly rolled back by the watch", wrong,
        "(reported)", True)  # fmt: skip
    return report


def markdown(report: dict) -> str:
    rows = ["| scenario | outcome | rate [95% CI] | target | met | n |", "|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        r = s["rate"]
        rows.append(
            f"| {s['scenario']} | {s['outcome']} | {r['rate']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | "
            f"{s['target']} | {'yes' if s['meets_target'] else '**no**'} | {s['experiments']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000, help="experiments per scenario (default 1000)")
    parser.add_argument("--watch-experiments", type=int, default=None, help="promotions per watch scenario")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import os

    load = os.getloadavg()
    report = scenarios(args.experiments, args.seed, watch_experiments=args.watch_experiments)
    report |= {
        "command": "uv run python -m bench.ab_simulation " + shlex.join(sys.argv[1:] if argv is None else argv),
        "experiments_per_scenario": args.experiments,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_at_start": [round(v, 2) for v in load],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": "a shared 2-core machine (other jobs ran at the same time)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"{report['seconds']} s; written to {args.out}")


if __name__ == "__main__":
    main()
