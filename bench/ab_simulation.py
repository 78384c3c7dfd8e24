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
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.stats import binomtest

from bench.readme import write_table
from contracts.api import CONTINUE, INVALID, PROMOTE, ArmOutcome, ExperimentPlan, UserSums
from contracts.api import Arm as ArmName
from contracts.decision import Decision, WatchPromise
from contracts.registry import CHAMPION
from flows.lib.ab_plan import PlanInputs, make_plan
from flows.lib.ab_policy import ArmEvidence, Evidence, decide, promise_of, watch

RESULTS = Path(__file__).resolve().parent / "results" / "ab_simulation.json"
MARKER = "ab_simulation"
"""The README's table sits between `<!-- bench:ab_simulation:start -->` and `<!-- bench:ab_simulation:end -->`."""


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
    watch_hours: float = 168.0
    """The post-promotion watch's period (the flows' default, `DRIFTLOOP_AB_WATCH_HOURS`)."""


COLUMNS = ("users", "labelled_users", "requests", "errors", "labelled", "correct",
           "scored_users", "sum_n", "sum_x", "sum_nn", "sum_xx", "sum_nx")  # fmt: skip
"""The router's cumulative counts of one arm, one column each (the last six are the per-user sums)."""


def draw_users(rng: np.random.Generator, count: int, arm: Arm, icc: float, mean_requests: float) -> list[np.ndarray]:
    """`count` new users of an arm: their contributions to each of the `COLUMNS` (one array per column, numpy).

    A user sends a geometric number of requests; each fails with the arm's error rate, an answered one is labelled
    with the arm's label rate and is right with the user's accuracy (Beta around the arm's, of intra-user
    correlation `icc`). A user with no scored request adds 0 to every per-user sum.
    """
    m = rng.geometric(1 / mean_requests, size=count)
    if icc > 0:
        k = (1 - icc) / icc
        acc = rng.beta(arm.accuracy * k, (1 - arm.accuracy) * k, size=count)
    else:
        acc = arm.accuracy
    failed = rng.binomial(m, arm.error_rate)
    answered = m - failed
    labelled = rng.binomial(answered, arm.label_rate)
    correct = rng.binomial(labelled, acc)
    n = labelled + failed
    return [None, labelled > 0, answered, failed, labelled, correct, n > 0, n, correct, n * n, correct * correct,
            n * correct]  # fmt: skip


def totals(columns: list[np.ndarray], groups: int, size: int) -> np.ndarray:
    """The `COLUMNS` summed over consecutive blocks of `size` users (`groups` x `len(COLUMNS)`, int64)."""
    out = np.empty((groups, len(COLUMNS)), dtype=np.int64)
    out[:, 0] = size
    for j, column in enumerate(columns[1:], start=1):
        out[:, j] = column.reshape(groups, size).sum(axis=1)
    return out


def cumulative(
    rng: np.random.Generator, per_look: np.ndarray, arm: Arm, icc: float, mean_requests: float
) -> np.ndarray:
    """The cumulative `COLUMNS` of an arm after each look, `per_look[i]` new users arriving at look i + 1."""
    columns = draw_users(rng, int(per_look.sum()), arm, icc, mean_requests)
    look = np.repeat(np.arange(len(per_look)), per_look)
    out = np.empty((len(per_look), len(COLUMNS)), dtype=np.int64)
    out[:, 0] = per_look
    for j, column in enumerate(columns[1:], start=1):
        out[:, j] = np.bincount(look, weights=column, minlength=len(per_look)).round()
    return np.cumsum(out, axis=0)


def user_sums(row: np.ndarray) -> UserSums | None:
    """The per-user sums of one arm's cumulative row (None before any scored request)."""
    k, sn, sx, snn, sxx, snx = (int(v) for v in row[6:])
    if k == 0:
        return None
    return UserSums(users=k, sum_n=sn, sum_x=sx, sum_nn=snn, sum_xx=sxx, sum_nx=snx)


def arm_evidence(row: np.ndarray, version: str) -> ArmEvidence:
    """The evidence `decide()` reads, from one arm's cumulative row."""
    users, labelled_users, requests, errors, labelled, correct = (int(v) for v in row[:6])
    return ArmEvidence(
        version=version, requests=requests, errors=errors, labelled=labelled, correct=correct, users=users,
        labelled_users=labelled_users, user_sums=user_sums(row),
    )  # fmt: skip


def arm_outcome(row: np.ndarray, arm: ArmName, version: str, hours: float) -> ArmOutcome:
    """The router's `ArmOutcome` of one arm's cumulative row, its requests spread over `hours`."""
    users, labelled_users, requests, errors, labelled, correct = (int(v) for v in row[:6])
    return ArmOutcome(
        arm=arm, model_version=version, requests=requests, labelled=labelled, correct=correct,
        incorrect=labelled - correct, errors=errors, users=users, labelled_users=labelled_users,
        user_sums=user_sums(row), first_request_at=_at(0), last_request_at=_at(hours),
    )  # fmt: skip


def _at(hours: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=hours)


def scored_per_user(arm: Arm, mean_requests: float) -> float:
    """Expected scored outcomes (labelled answered + failed) per user."""
    return mean_requests * ((1 - arm.error_rate) * arm.label_rate + arm.error_rate)


def plan_for(scenario: Scenario, rng: np.random.Generator, *, alpha: float, power: float, mde: float) -> ExperimentPlan:
    """The plan the retrain flow would make: `make_plan` on a day of the champion's traffic."""
    pre = totals(draw_users(rng, 3000, scenario.champion, scenario.icc, scenario.mean_requests), 1, 3000)[0]
    baseline = pre[8] / pre[7]
    inputs = PlanInputs(
        champion_version="1", challenger_version="2", baseline=float(min(baseline, 1 - mde - 0.005)), alpha=alpha,
        power=power, mde=mde, mde_relative=False, ab_split_b=0.5, max_duration_hours=float(scenario.looks),
        srm_threshold=0.005, guardrail_error_margin=0.005, guardrail_error_margin_relative=0.25,
        guardrail_latency_margin=0.5, guardrail_latency_slack_ms=20.0, watch_hours=scenario.watch_hours,
    )  # fmt: skip
    return make_plan(inputs, arm_outcome(pre, CHAMPION, "1", 24.0))


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
) -> tuple[str, str, int, Decision | None]:
    """One experiment through `decide()` look by look, handled as the flow handles each decision.

    The traffic of all looks is drawn at once (numpy); each look's cumulative counts go through `decide()`.
    """
    to_b = rng.binomial(users, scenario.split, size=scenario.looks)
    a = cumulative(rng, users - to_b, scenario.champion, scenario.icc, scenario.mean_requests)
    b = cumulative(rng, to_b, scenario.challenger, scenario.icc, scenario.mean_requests)
    paused_at: int | None = None
    first: tuple[str, str, int] | None = None
    decision = None
    for look in range(1, scenario.looks + 1):
        row = look - 1 if paused_at is None else paused_at - 1  # paused: the counts stop growing
        evidence = Evidence(
            champion=arm_evidence(a[row], "1"), challenger=arm_evidence(b[row], "2"), plan=plan,
            elapsed_hours=float(look), paused=paused_at is not None,
        )  # fmt: skip
        decision = decide(evidence, reference_test=False)
        if decision.decision == CONTINUE:
            continue
        if first is None:
            first = (decision.decision, decision.rule, look)
        if decision.decision == INVALID:
            # The flow pauses it; it stays paused (rolled back at the maximum duration).
            paused_at = paused_at or look
            continue
        break
    if first is None:
        first = (CONTINUE, "undecided", scenario.looks)
    return (*first, decision)


def simulate(scenario: Scenario, *, experiments: int, seed: int, alpha: float = 0.05, power: float = 0.8,
             mde: float = 0.05) -> SimResult:  # fmt: skip
    """Run `experiments` experiments of one scenario."""
    rng = np.random.default_rng(seed)
    plan = plan_for(scenario, rng, alpha=alpha, power=power, mde=mde)
    users = users_per_look(scenario, plan)
    decisions, rules, looks = [], [], []
    for _ in range(experiments):
        decision, rule, look, _ = run_experiment(scenario, plan, users, rng)
        decisions.append(decision)
        rules.append(rule)
        looks.append(look)
    return SimResult(scenario, plan, users, np.array(decisions), np.array(rules), np.array(looks))


def planned_look(result: SimResult) -> int:
    """The look by which the planned sample per arm is expected."""
    return result.scenario.plan_look


def simulate_watch(
    scenario: Scenario, *, experiments: int, seed: int, lucky: bool, alpha: float = 0.05, power: float = 0.8,
    mde: float = 0.05, max_tries: int | None = None,
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
    max_tries = max_tries or experiments * (20_000 if lucky else 20)
    per_arm = int(users * 0.5 * scenario.plan_look)
    while len(restored) < experiments and tries < max_tries:
        if lucky:
            # A batch of experiments at the planned look; only those whose lift's CS could lie above 0 (a
            # vectorised screen with a wide margin) go through `decide()`, and only its PROMOTE counts.
            batch = min(LUCKY_BATCH, max_tries - tries)
            tries += batch
            a, b = (
                totals(draw_users(rng, batch * per_arm, truth, scenario.icc, scenario.mean_requests), batch, per_arm)
                for truth in (scenario.champion, scenario.challenger)
            )
            for i in np.flatnonzero(_may_promote(a, b, plan)):
                evidence = Evidence(champion=arm_evidence(a[i], "1"), challenger=arm_evidence(b[i], "2"), plan=plan,
                                    elapsed_hours=float(scenario.plan_look))  # fmt: skip
                decision = decide(evidence, reference_test=False)
                if decision.decision != PROMOTE or len(restored) >= experiments:
                    continue
                promise = promise_of(decision, plan.watch_hours, _at(scenario.plan_look))
                decisions.append(PROMOTE)
                rules.append(decision.rule)
                looks.append(scenario.plan_look)
                restored.append(_watch(promise, scenario.challenger, scenario, users, rng))
            continue
        tries += 1
        outcome, rule, look, decision = run_experiment(scenario, plan, users, rng)
        if outcome != PROMOTE:
            continue
        promise = promise_of(decision, plan.watch_hours, _at(look))
        decisions.append(PROMOTE)
        rules.append(rule)
        looks.append(look)
        restored.append(_watch(promise, scenario.challenger, scenario, users, rng))
    return SimResult(scenario, plan, users, np.array(decisions), np.array(rules), np.array(looks),
                     restored=np.array(restored, dtype=bool))  # fmt: skip


LUCKY_BATCH = 500
"""Experiments drawn at once when forcing lucky promotions."""


def _may_promote(a: np.ndarray, b: np.ndarray, plan: ExperimentPlan) -> np.ndarray:
    """Which experiments (rows of cumulative counts) `decide()` could promote: the lift's estimate above 0.8 of its
    CS radius (PROMOTE needs it above the whole radius, computed by `decide()`), so none that could is skipped."""
    variance = np.zeros(len(a))
    ratio = []
    for s in (a, b):
        k, n, x, nn, xx, nx = (s[:, j].astype(float) for j in range(6, 12))
        smoothed = (x + 1) / (n + 2)
        residual = xx - 2 * smoothed * nx + smoothed**2 * nn
        iid = smoothed * (1 - smoothed) / n
        variance += np.maximum(k / (k - 1) * residual / n**2, iid / k)
        ratio.append(x / n)
    t2 = plan.mde**2
    log_term = np.log(1 / plan.alpha) + 0.5 * np.log((variance + t2) / variance)
    radius = np.sqrt(2 * variance * (variance + t2) / t2 * log_term)
    return ratio[1] - ratio[0] > 0.8 * radius


def _watch(promise: WatchPromise, truth: Arm, scenario: Scenario, users: int, rng: np.random.Generator) -> bool:
    """The watch of a new champion with accuracy `truth`, serving all users, one look per hour for its period."""
    hours = int(promise.period_hours)
    served = cumulative(rng, np.full(hours, users), truth, scenario.icc, scenario.mean_requests)
    for hour in range(1, hours + 1):
        result = watch(promise, user_sums(served[hour - 1]), float(hour))
        if result.verdict == "REGRESSION":
            return True
        if result.verdict == "DONE":
            return False
    return False


# --- the benchmark -------------------------------------------------------------------------------------------------

BASE = Arm(accuracy=0.80)
BETTER = Arm(accuracy=0.85)


def _row(name: str, result: SimResult, outcome: str, value: Rate, target: str, ok: bool) -> dict:
    return {
        "scenario": name, "outcome": outcome, "rate": value.as_dict(), "target": target, "meets_target": ok,
        "planned_per_arm": result.plan.min_samples_per_arm, "design_effect": result.plan.design_effect,
        "users_per_look": result.users_per_look, "experiments": result.experiments,
    }  # fmt: skip


def _job(kind: str, arg: float, experiments: int, seed: int) -> list[dict]:
    """One scenario of the benchmark (run in a worker process): its rows of the report."""
    if kind == "aa":
        aa = simulate(Scenario(BASE, BASE, icc=arg), experiments=experiments, seed=seed)
        promoted = rate(aa.count(PROMOTE), aa.experiments, method="exact")
        invalid = rate(aa.count(INVALID), aa.experiments, method="exact")
        return [
            _row(f"A/A, ICC {arg}", aa, "false PROMOTE (72 looks)", promoted, "<= 0.025", promoted.high <= 0.025),
            _row(f"A/A, ICC {arg}", aa, "false INVALID (72 looks)", invalid, "<= 0.005", invalid.high <= 0.005),
        ]
    if kind == "ab":
        ab = simulate(Scenario(BASE, BETTER, icc=arg), experiments=experiments, seed=seed)
        by_plan = ab.rate(PROMOTE, by_look=ab.scenario.plan_look)
        return [_row(f"A/B at the MDE, ICC {arg}", ab, "PROMOTE by the planned sample", by_plan, ">= 0.80",
                     by_plan.rate >= 0.80)]  # fmt: skip
    if kind == "mnar":
        mnar = simulate(Scenario(BASE, Arm(0.80, label_rate=0.45), icc=0.1), experiments=experiments, seed=seed)
        promoted = rate(mnar.count(PROMOTE), mnar.experiments, method="exact")
        return [_row("labels MNAR (challenger 10% fewer), equal models", mnar, "false PROMOTE", promoted, "<= 0.025",
                     promoted.high <= 0.025)]  # fmt: skip
    if kind == "errors":
        errors = simulate(Scenario(Arm(0.80, error_rate=0.03), Arm(0.80, error_rate=0.045), icc=0.1),
                          experiments=experiments, seed=seed)  # fmt: skip
        promoted = errors.rate(PROMOTE)
        return [_row("challenger 1.5x the error rate, equal accuracy", errors, PROMOTE, promoted, "<= 0.05",
                     promoted.rate <= 0.05)]  # fmt: skip
    if kind == "srm":
        # At the plan's traffic (plan_look 24), and the same skew at 6x the traffic (the plan reached by look 4).
        srm = simulate(Scenario(BASE, BASE, icc=0.1, split=0.47, plan_look=int(arg)), experiments=experiments,
                       seed=seed)  # fmt: skip
        flagged = srm.rate(INVALID)
        name = "SRM: 0.47 served vs 0.5 planned" + ("" if arg == 24 else ", 6x the traffic")
        return [_row(name, srm, INVALID, flagged, ">= 0.99", flagged.rate >= 0.99)]
    if kind == "lucky":
        lucky = simulate_watch(Scenario(BASE, BASE, icc=0.1), experiments=experiments, seed=seed, lucky=True)
        back = rate(int(lucky.restored.sum()), len(lucky.restored))
        return [_row("lucky promotion (lift 0, forced), watch", lucky,
                     f"previous champion restored within the {lucky.plan.watch_hours:g} h watch", back, ">= 0.80",
                     back.rate >= 0.80)]  # fmt: skip
    lift = arg
    winners = simulate_watch(Scenario(BASE, Arm(0.80 + lift), icc=0.1), experiments=experiments, seed=seed,
                             lucky=False)  # fmt: skip
    wrong = rate(int(winners.restored.sum()), len(winners.restored))
    name = "true winner (lift = MDE) promoted, watch" if lift == 0.05 else f"true winner (lift {lift}) promoted, watch"
    return [_row(name, winners, "wrongly rolled back by the watch", wrong, "(reported)", True)]


def scenarios(experiments: int, seed: int, *, watch_experiments: int | None = None, jobs: int = 2) -> dict:
    """Every scenario of the issue, with its target, over `jobs` processes (at most 2: a shared machine)."""
    watch_n = watch_experiments or max(50, experiments // 10)
    plan = [
        ("lucky", 0.0, watch_n, seed + 30),  # the longest first
        *[(kind, icc, experiments, seed + offset + i) for i, icc in enumerate((0.0, 0.1, 0.3))
          for kind, offset in (("aa", 0), ("ab", 10))],
        ("mnar", 0.0, experiments, seed + 20),
        ("errors", 0.0, experiments, seed + 21),
        ("srm", 24, experiments, seed + 22),
        ("srm", 4, experiments, seed + 23),
        ("winner", 0.05, watch_n, seed + 31),
        ("winner", 0.025, watch_n, seed + 32),
    ]  # fmt: skip
    with ProcessPoolExecutor(max_workers=max(1, min(2, jobs))) as pool:
        futures = [pool.submit(_job, *job) for job in plan]
        rows = [row for future in futures for row in future.result()]
    display = sorted(rows, key=lambda r: _ORDER.index(r["scenario"].split(",")[0]))
    for r in display:
        print(f"{r['scenario']:48s} {r['outcome']:44s} {Rate(**_rate_args(r['rate']))}  target {r['target']}  "
              f"{'ok' if r['meets_target'] else 'MISSED'}", flush=True)  # fmt: skip
    return {"scenarios": display}


_ORDER = ["A/A", "A/B at the MDE", "labels MNAR (challenger 10% fewer)", "challenger 1.5x the error rate",
          "SRM: 0.47 served vs 0.5 planned", "lucky promotion (lift 0", "true winner (lift = MDE) promoted",
          "true winner (lift 0.025) promoted"]  # fmt: skip


def _rate_args(r: dict) -> dict:
    return {"k": r["k"], "n": r["n"], "rate": r["rate"], "low": r["ci_low"], "high": r["ci_high"], "method": ""}


def markdown(report: dict) -> str:
    rows = ["| scenario | outcome | rate [95% CI] | target | met | n |", "|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        r = s["rate"]
        rows.append(
            f"| {s['scenario']} | {s['outcome']} | {r['rate']:.4f} [{r['ci_low']:.4f}, {r['ci_high']:.4f}] | "
            f"{s['target']} | {'yes' if s['meets_target'] else '**no**'} | {s['experiments']} |"
        )
    return "\n".join(rows)


def readme_text(report: dict) -> str:
    """What the README shows of a run: its command, time and load, then the table."""
    start, end = (" / ".join(f"{v:.1f}" for v in report[f"load_average_at_{when}"]) for when in ("start", "end"))
    return (
        f"`{report['command']}`: {report['seconds']:,.0f} s over {report['processes']} processes, load average {start} "
        f"(1 / 5 / 15 min) at the start and {end} at the end; results in `bench/results/ab_simulation.json`.\n\n"
        + markdown(report)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000, help="experiments per scenario (default 1000)")
    parser.add_argument("--watch-experiments", type=int, default=None, help="promotions per watch scenario")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (at most 2, default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite the README's table from --out")
    args = parser.parse_args(argv)
    if args.readme_only:
        write_table(MARKER, readme_text(json.loads(args.out.read_text())))
        return
    started = time.perf_counter()
    load = os.getloadavg()
    report = scenarios(args.experiments, args.seed, watch_experiments=args.watch_experiments, jobs=args.jobs)
    report |= {
        "command": "uv run python -m bench.ab_simulation " + shlex.join(sys.argv[1:] if argv is None else argv),
        "experiments_per_scenario": args.experiments,
        "watch_promotions_per_scenario": args.watch_experiments,
        "processes": args.jobs,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_at_start": [round(v, 2) for v in load],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "note": "a shared 2-core machine (other jobs ran at the same time)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"{report['seconds']} s; written to {args.out}")
    if args.out == RESULTS:
        write_table(MARKER, readme_text(report))


if __name__ == "__main__":
    main()
