"""Monte Carlo check of the A/B decision under repeated looks: false promotions, power, and SRM detection.

One harness, `simulate()`, serves both the CI tests (a few hundred experiments) and this benchmark (thousands):
it draws cumulative outcome counts look by look and sends every look through the same `decide()` the
A/B evaluation flow uses. Run it with `uv run python -m bench.ab_simulation [--experiments N]`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
from scipy.stats import binomtest

from contracts.api import ExperimentPlan
from flows.lib.experiment import (
    MIN_LABELLED_PER_ARM,
    ArmEvidence,
    Evidence,
    decide,
    plain_chi2,
    plan_sample_size,
)

Method = Literal["sequential", "plain_chi2"]
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
    """k/n with a Wilson (default) or Clopper-Pearson ("exact") interval, from `scipy.stats.binomtest`.

    Args:
        k: Successes.
        n: Trials (at least 1).
        confidence: Confidence level of the interval.
        method: "wilson" or "exact" (Clopper-Pearson).

    Returns:
        The rate and its interval.
    """
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method=method)
    return Rate(int(k), int(n), k / n, float(ci.low), float(ci.high), method)


@dataclass
class SimResult:
    """Per-experiment outcome of a simulation: the first non-CONTINUE decision, its rule, look and sample size."""

    method: Method
    params: dict
    plan: ExperimentPlan
    looks_n_per_arm: np.ndarray
    """Expected labelled outcomes per arm at each look (1-based look k is index k - 1)."""
    decisions: np.ndarray
    """PROMOTE, ROLLBACK, INVALID, or CONTINUE when no look decided."""
    rules: np.ndarray
    """The rule that fired (`decide()`'s evidence["rule"]), e.g. better, worse, max_duration, srm_all."""
    stop_look: np.ndarray
    """1-based look of the decision (looks + 1 when none)."""
    samples_per_arm: np.ndarray
    """Labelled outcomes of the smaller arm at the decision (or at the last look)."""
    seconds: float = 0.0

    @property
    def experiments(self) -> int:
        return len(self.decisions)

    def count(self, decision: str, *, by_look: int | None = None, rule: str | None = None) -> int:
        """Experiments that ended with `decision` (and `rule`) at or before look `by_look`."""
        hit = self.decisions == decision
        if rule is not None:
            hit &= self.rules == rule
        if by_look is not None:
            hit &= self.stop_look <= by_look
        return int(hit.sum())

    def rate(self, decision: str, *, by_look: int | None = None, rule: str | None = None, **ci) -> Rate:
        """Share of experiments that ended with `decision` by look `by_look`, with a 95% Wilson interval."""
        return rate(self.count(decision, by_look=by_look, rule=rule), self.experiments, **ci)

    def cumulative(self, decision: str) -> list[Rate]:
        """The rate of `decision` by each look."""
        return [self.rate(decision, by_look=k) for k in range(1, len(self.looks_n_per_arm) + 1)]

    def summary(self) -> dict:
        """Counts of every (decision, rule) and the run's parameters, JSON-ready."""
        outcomes: dict[str, int] = {}
        for decision, rule in zip(self.decisions, self.rules, strict=True):
            key = f"{decision}:{rule}"
            outcomes[key] = outcomes.get(key, 0) + 1
        stopped = self.stop_look <= len(self.looks_n_per_arm)
        return {
            "method": self.method,
            "params": self.params,
            "experiments": self.experiments,
            "outcomes": dict(sorted(outcomes.items())),
            "median_stop_look": float(np.median(self.stop_look[stopped])) if stopped.any() else None,
            "mean_samples_per_arm_at_stop": float(self.samples_per_arm.mean()),
            "seconds": self.seconds,
        }


def simulate(
    *,
    experiments: int,
    p_champion: float,
    p_challenger: float,
    n_per_look_per_arm: int,
    looks: int,
    alpha: float,
    mde: float,
    split_b: float = 0.5,
    srm_split: float | None = None,
    seed: int,
    method: Method = "sequential",
    power: float = 0.8,
    tau: float | None = None,
    label_rate: float = 0.5,
    error_rate: float = 0.002,
    latency_p95_ms: tuple[float, float] = (40.0, 40.0),
    max_duration_looks: int | None = None,
) -> SimResult:
    """Run `experiments` independent A/B experiments, each looked at `looks` times, and record how each ended.

    Per look, 2 * n_per_look_per_arm / label_rate requests arrive and go to the challenger with probability
    `srm_split` (or the planned `split_b`); each fails with `error_rate`, each answered one is labelled with
    `label_rate`, and each labelled one is correct with its arm's accuracy. Counts accumulate over looks; look k
    is k hours into the experiment, whose maximum duration is `max_duration_looks` hours (default `looks`, so the
    last look ends every undecided experiment). Every look goes through `decide()` (method "sequential") or the
    naive chi-squared rule p < alpha (method "plain_chi2", for contrast); an experiment stops at its first
    PROMOTE, ROLLBACK or INVALID. The draws depend on `seed` only, so both methods see the same data.

    Args:
        experiments: Number of simulated experiments.
        p_champion: True accuracy of the champion (also the plan's baseline).
        p_challenger: True accuracy of the challenger.
        n_per_look_per_arm: Expected labelled outcomes per arm added at each look (at a 50/50 split).
        looks: Looks per experiment.
        alpha: The plan's alpha.
        mde: The plan's minimum detectable effect (and the default tau).
        split_b: The planned challenger share.
        srm_split: The actual challenger share, to inject a sample ratio mismatch (default: the planned one).
        seed: Seed of the random draws.
        method: "sequential" (the flow's `decide()`) or "plain_chi2" (chi-squared p < alpha at every look).
        power: The plan's power.
        tau: Mixing standard deviation (default `mde`).
        label_rate: Share of answered requests that get a label.
        error_rate: Share of requests whose prediction fails, in both arms.
        latency_p95_ms: (champion, challenger) p95 latencies reported at every look.
        max_duration_looks: Look at which the plan's maximum duration is reached.

    Returns:
        How each experiment ended.
    """
    start = time.perf_counter()
    sequential_n, fixed_n = plan_sample_size(baseline=p_champion, mde=mde, alpha=alpha, power=power, tau=tau)
    max_duration = looks if max_duration_looks is None else max_duration_looks
    plan = ExperimentPlan(
        champion_version="1",
        challenger_version="2",
        alpha=alpha,
        power=power,
        mde=mde,
        baseline=p_champion,
        min_samples_per_arm=sequential_n,
        fixed_horizon_samples_per_arm=fixed_n,
        ab_split_b=split_b,
        max_duration_hours=float(max_duration),
    )
    counts = _draw(
        np.random.default_rng(seed),
        experiments=experiments,
        looks=looks,
        requests_per_look=round(2 * n_per_look_per_arm / label_rate),
        split=split_b if srm_split is None else srm_split,
        error_rate=error_rate,
        label_rate=label_rate,
        accuracy=(p_champion, p_challenger),
    )
    decisions = np.full(experiments, "CONTINUE", dtype=object)
    rules = np.full(experiments, "undecided", dtype=object)
    stop_look = np.full(experiments, looks + 1)
    samples = np.zeros(experiments, dtype=int)
    decide_look = _sequential_decision if method == "sequential" else _plain_chi2_decision
    for e in range(experiments):
        for k in range(looks):
            arms = [
                ArmEvidence(
                    version=version,
                    requests=int(counts["answered"][arm][e, k]),
                    errors=int(counts["errors"][arm][e, k]),
                    labelled=int(counts["labelled"][arm][e, k]),
                    correct=int(counts["correct"][arm][e, k]),
                    latency_p95_ms=latency_p95_ms[arm],
                )
                for arm, version in ((0, "1"), (1, "2"))
            ]
            evidence = Evidence(champion=arms[0], challenger=arms[1], plan=plan, elapsed_hours=float(k + 1), tau=tau)
            decision, rule = decide_look(evidence)
            samples[e] = min(arms[0].labelled, arms[1].labelled)
            if decision != "CONTINUE":
                decisions[e], rules[e], stop_look[e] = decision, rule, k + 1
                break
    params = {
        "experiments": experiments,
        "p_champion": p_champion,
        "p_challenger": p_challenger,
        "n_per_look_per_arm": n_per_look_per_arm,
        "looks": looks,
        "alpha": alpha,
        "mde": mde,
        "power": power,
        "tau": mde if tau is None else tau,
        "split_b": split_b,
        "srm_split": srm_split,
        "seed": seed,
        "label_rate": label_rate,
        "error_rate": error_rate,
        "latency_p95_ms": list(latency_p95_ms),
        "max_duration_looks": max_duration,
    }
    return SimResult(
        method=method,
        params=params,
        plan=plan,
        looks_n_per_arm=n_per_look_per_arm * np.arange(1, looks + 1),
        decisions=decisions,
        rules=rules,
        stop_look=stop_look,
        samples_per_arm=samples,
        seconds=time.perf_counter() - start,
    )


def _draw(
    rng: np.random.Generator,
    *,
    experiments: int,
    looks: int,
    requests_per_look: int,
    split: float,
    error_rate: float,
    label_rate: float,
    accuracy: tuple[float, float],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Cumulative counts per arm, each of shape (experiments, looks): assigned, errors, answered, labelled, correct."""
    shape = (experiments, looks)
    to_b = rng.binomial(requests_per_look, split, shape)
    assigned = (requests_per_look - to_b, to_b)
    errors = tuple(rng.binomial(n, error_rate) for n in assigned)
    answered = tuple(n - x for n, x in zip(assigned, errors, strict=True))
    labelled = tuple(rng.binomial(n, label_rate) for n in answered)
    correct = tuple(rng.binomial(n, p) for n, p in zip(labelled, accuracy, strict=True))
    per_look = {"assigned": assigned, "errors": errors, "answered": answered, "labelled": labelled, "correct": correct}
    return {name: tuple(np.cumsum(x, axis=1) for x in pair) for name, pair in per_look.items()}


def _sequential_decision(evidence: Evidence) -> tuple[str, str]:
    decision = decide(evidence)
    return decision.decision, decision.evidence["rule"]


def _plain_chi2_decision(evidence: Evidence) -> tuple[str, str]:
    """The naive rule the sequential test replaces: chi-squared p < alpha at every look (no SRM, no guardrails)."""
    a, b, plan = evidence.champion, evidence.challenger, evidence.plan
    if min(a.labelled, b.labelled) >= MIN_LABELLED_PER_ARM:
        p_value = plain_chi2(a.labelled, a.correct, b.labelled, b.correct)
        if p_value < plan.alpha:
            better = b.correct / b.labelled > a.correct / a.labelled
            return ("PROMOTE", "better") if better else ("ROLLBACK", "worse")
    if evidence.elapsed_hours is not None and evidence.elapsed_hours >= plan.max_duration_hours:
        return "ROLLBACK", "max_duration"
    return "CONTINUE", "undecided"


def scenarios(experiments: int, seed: int) -> dict:
    """The benchmark: A/A under both methods, A/B at a lift of mde, and an injected SRM, at a realistic setting."""
    baseline, mde, alpha, power = 0.80, 0.05, 0.05, 0.8
    planned, fixed = plan_sample_size(baseline=baseline, mde=mde, alpha=alpha, power=power)
    per_look = -(-planned // 10)  # a look every ~1/10 of the planned sample size ...
    looks = 15  # ... up to 1.5 times it, where the maximum duration ends the experiment
    plan_look = -(-planned // per_look)  # first look at which the planned sample size is reached
    common = {"n_per_look_per_arm": per_look, "looks": looks, "alpha": alpha, "mde": mde, "power": power}
    setting = {
        "baseline": baseline,
        "mde": mde,
        "alpha": alpha,
        "power": power,
        "tau": mde,
        "planned_sequential_n_per_arm": planned,
        "fixed_horizon_n_per_arm": fixed,
        "n_per_look_per_arm": per_look,
        "looks": looks,
        "planned_n_reached_at_look": plan_look,
        "label_rate": 0.5,
        "error_rate": 0.002,
    }
    runs = {
        "aa_sequential": simulate(
            experiments=experiments, p_champion=baseline, p_challenger=baseline, seed=seed, **common
        ),
        "aa_plain_chi2": simulate(
            experiments=experiments,
            p_champion=baseline,
            p_challenger=baseline,
            seed=seed,
            method="plain_chi2",
            **common,
        ),
        "ab_sequential": simulate(
            experiments=experiments, p_champion=baseline, p_challenger=baseline + mde, seed=seed + 1, **common
        ),
        "srm_sequential": simulate(
            experiments=experiments,
            p_champion=baseline,
            p_challenger=baseline,
            srm_split=0.47,
            seed=seed + 2,
            **common,
        ),
    }
    aa, naive, ab, srm = runs.values()
    by_plan = ab.rate("PROMOTE", by_look=plan_look)
    rows = [
        ("A/A", "sequential", "false PROMOTE by last look", aa.rate("PROMOTE"), f"<= alpha = {alpha}"),
        ("A/A", "plain chi2", "false PROMOTE by last look", naive.rate("PROMOTE"), "(contrast)"),
        ("A/A", "sequential", "any non-CONTINUE except max duration", _any_error(aa), "(contrast)"),
        ("A/A", "plain chi2", "any non-CONTINUE except max duration", _any_error(naive), "(contrast)"),
        ("A/A", "sequential", "false INVALID (SRM)", aa.rate("INVALID"), "small (~looks x 2 x 0.001 max)"),
        ("A/B +mde", "sequential", f"PROMOTE by planned n (look {plan_look})", by_plan, f">= power = {power}"),
        ("A/B +mde", "sequential", f"PROMOTE by look {looks}", ab.rate("PROMOTE"), "(later looks add power)"),
        ("A/B +mde", "sequential", "ROLLBACK (any rule)", ab.rate("ROLLBACK"), "small"),
        ("SRM 0.47", "sequential", "INVALID", srm.rate("INVALID"), ">= 0.99"),
    ]  # fmt: skip
    per_look_rows = [
        (k, int(aa.looks_n_per_arm[k - 1]), s, c)
        for k, s, c in zip(range(1, looks + 1), aa.cumulative("PROMOTE"), naive.cumulative("PROMOTE"), strict=True)
    ]
    return {"setting": setting, "runs": runs, "rows": rows, "per_look": per_look_rows, "plan_look": plan_look}


def _any_error(result: SimResult) -> Rate:
    """Share of A/A experiments stopped by anything but the maximum duration (both directions, SRM, guardrails)."""
    stopped = int(((result.decisions != "CONTINUE") & (result.rules != "max_duration")).sum())
    return rate(stopped, result.experiments)


def markdown(report: dict) -> str:
    """The benchmark's tables."""
    lines = [
        "| scenario | method | outcome | rate [95% Wilson CI] | k / n | target |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {m} | {what} | {r} | {r.k} / {r.n} | {target} |" for s, m, what, r, target in report["rows"]]
    lines += [
        "",
        "A/A: cumulative false PROMOTE rate by look (same simulated data for both methods)",
        "",
        "| look | labelled per arm | sequential (decide) | plain chi2 at every look |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {n} | {s} | {c} |" for k, n, s, c in report["per_look"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the four scenarios, print the tables, and write the JSON results."""
    parser = argparse.ArgumentParser(prog="python -m bench.ab_simulation", description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000, help="experiments per scenario (default 10000)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    command = "uv run python -m bench.ab_simulation " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"$ {command.strip()}")
    start = time.perf_counter()
    report = scenarios(args.experiments, args.seed)
    wall = time.perf_counter() - start
    setting = report["setting"]
    print(
        f"setting: baseline accuracy {setting['baseline']}, mde {setting['mde']}, alpha {setting['alpha']}, "
        f"power {setting['power']}, tau {setting['tau']}; planned n per arm {setting['planned_sequential_n_per_arm']} "
        f"(sequential) vs {setting['fixed_horizon_n_per_arm']} (fixed horizon); a look every "
        f"{setting['n_per_look_per_arm']} labelled outcomes per arm (~1/10 of the plan), {setting['looks']} looks "
        f"(up to 1.5x the plan), the last one at the maximum duration; label rate {setting['label_rate']}, "
        f"error rate {setting['error_rate']} in both arms; {args.experiments} experiments per scenario, seed "
        f"{args.seed}"
    )
    print()
    print(markdown(report))
    print()
    print(f"wall time: {wall:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command.strip(),
        "seed": args.seed,
        "experiments": args.experiments,
        "wall_seconds": wall,
        "setting": setting,
        "rows": [
            {"scenario": s, "method": m, "outcome": what, "target": target} | r.as_dict()
            for s, m, what, r, target in report["rows"]
        ],
        "per_look": [
            {"look": k, "labelled_per_arm": n, "sequential_promote": s.as_dict(), "plain_chi2_promote": c.as_dict()}
            for k, n, s, c in report["per_look"]
        ],
        "runs": {name: run.summary() | {"plan": msgspec.to_builtins(run.plan)} for name, run in report["runs"].items()},
    }
    args.out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
