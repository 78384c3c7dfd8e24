"""The baseline an experiment is planned against: the champion's level, kept under the 100% ceiling."""

from __future__ import annotations

import pytest

from flows.lib.ab_plan import CEILING_HEADROOM, plannable_baseline


def test_an_ordinary_champion_is_planned_at_its_own_level():
    assert plannable_baseline(0.82, mde=0.05, relative=False) == 0.82
    assert plannable_baseline(0.82, mde=0.05, relative=True) == 0.82


@pytest.mark.parametrize(("mde", "relative", "lift"), [(0.05, False, 0.05), (0.05, True, 0.05 * 0.99)])
def test_a_near_perfect_champion_is_planned_where_the_lift_fits_under_100_percent(mde, relative, lift):
    baseline = plannable_baseline(0.99, mde=mde, relative=relative)
    assert baseline < 0.99
    assert baseline == pytest.approx(1.0 - lift - CEILING_HEADROOM)
    assert baseline + lift < 1.0
