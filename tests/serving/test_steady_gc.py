"""The collector while the router serves: start-up objects frozen, young collections rarer, all restored after."""

from __future__ import annotations

import gc

from serving.app import YOUNG_GC_THRESHOLD


async def test_serving_freezes_start_up_objects_and_restores_the_collector_after(make_app):
    before = gc.get_threshold()
    first, second = make_app(), make_app()
    async with first.lifespan():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (max(YOUNG_GC_THRESHOLD, before[0]), *before[1:])
        async with second.lifespan():  # a second app in the same process (a replica in a test)
            assert gc.get_threshold()[0] == max(YOUNG_GC_THRESHOLD, before[0])
        assert gc.get_freeze_count() > 0  # still serving
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
