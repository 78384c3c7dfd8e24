"""The replay command on two CSV files prints the verdict per column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.drift_replay import main


def test_replay_prints_the_verdict_per_column(
    tmp_path: Path, iris: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    iris.to_csv(tmp_path / "reference.csv", index=False)
    shifted = iris.sample(200, replace=True, random_state=1).assign(petal_length=lambda f: f.petal_length + 2)
    shifted.drop(columns=["species"]).to_csv(tmp_path / "current.csv", index=False)

    code = main([str(tmp_path / "reference.csv"), str(tmp_path / "current.csv"), "--target", "species", "--json"])

    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["valid"] is True
    assert {c for c, v in out["columns"].items() if v["drift"]} == {"petal_length"}
    assert out["columns"]["petal_length"]["method"] == "driftloop_ks_d"
