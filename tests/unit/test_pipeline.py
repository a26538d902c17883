"""The shard pipeline: pure shards, atomic parts, resume without recomputation, merge in shard order."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import pytest

from hopscope.models import tiny
from hopscope.pipeline import Analysis, Context, FolderStore, Stage, execute, merge, shard_seed
from hopscope.results import Headline, Result


@dataclass
class ToySettings:
    n: int = 7
    per_shard: int = 3
    seed: int = 0

    @classmethod
    def quick(cls) -> "ToySettings":
        return cls(n=4)

    def to_dict(self) -> dict:
        return asdict(self)


CALLS: list[tuple[str, int]] = []


def _plan_items(ctx: Context) -> list[list[int]]:
    s = ctx.settings
    return [list(range(i, min(i + s.per_shard, s.n))) for i in range(0, s.n, s.per_shard)]


def _work_items(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    CALLS.append((shard.stage, shard.index))
    if getattr(ctx.settings, "fail_at", None) == shard.index:
        raise RuntimeError("simulated crash")
    return {"items": pd.DataFrame({"item": shard.payload, "seed": shard.seed, "n_layers": ctx.model["n_layers"]})}


def _plan_total(ctx: Context) -> list[int]:
    return [len(ctx.tables["items"])]


def _work_total(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    CALLS.append((shard.stage, shard.index))
    return {"total": pd.DataFrame({"count": [shard.payload], "sum": [int(ctx.tables["items"]["item"].sum())]})}


def _finish(ctx: Context) -> Result:
    total = ctx.tables["total"]
    return Result("toy", ctx.settings.to_dict(), dict(ctx.tables),
                  headline=[Headline("items counted", float(total["count"][0]), n=int(total["count"][0]))])


TOY = Analysis("toy", ToySettings, [Stage("items", _plan_items, _work_items), Stage("total", _plan_total, _work_total)],
               _finish)


@pytest.fixture(scope="module")
def lm():
    return tiny("llama", n_layers=2)


def test_stages_see_earlier_tables_and_merge_in_shard_order(lm):
    CALLS.clear()
    res = execute(TOY, lm, settings=ToySettings(), progress=False)
    assert res.tables["items"]["item"].tolist() == list(range(7))
    assert res.tables["total"].iloc[0].tolist() == [7, sum(range(7))]
    assert set(res.tables["items"]["n_layers"]) == {2}
    assert CALLS == [("items", 0), ("items", 1), ("items", 2), ("total", 0)]


def test_shard_seeds_are_pure_functions_of_identity():
    assert shard_seed(0, "toy", "items", 1) == shard_seed(0, "toy", "items", 1)
    assert len({shard_seed(0, "toy", "items", i) for i in range(50)}) == 50
    assert shard_seed(1, "toy", "items", 1) != shard_seed(0, "toy", "items", 1)


def test_interrupted_run_resumes_without_recomputing_finished_shards(lm, tmp_path, monkeypatch):
    ref = execute(TOY, lm, settings=ToySettings(), progress=False)
    monkeypatch.setattr(ToySettings, "fail_at", 2, raising=False)
    CALLS.clear()
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(TOY, lm, settings=ToySettings(), run_folder=tmp_path / "run", progress=False)
    store = FolderStore(tmp_path / "run" / "parts")
    assert store.count("items") == 2  # shards 0 and 1 finished and stayed
    assert not list((tmp_path / "run" / "parts" / "items").glob(".*"))  # no half-written shard left
    monkeypatch.setattr(ToySettings, "fail_at", None, raising=False)
    CALLS.clear()
    res = execute(TOY, lm, settings=ToySettings(), run_folder=tmp_path / "run", progress=False)
    assert CALLS == [("items", 2), ("total", 0)]  # only the missing shard and the later stage ran
    for name in ("items", "total"):
        pd.testing.assert_frame_equal(res.tables[name], ref.tables[name])


def test_result_saves_a_run_folder(lm, tmp_path):
    res = execute(TOY, lm, settings=ToySettings(), run_folder=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "report.html").is_file()
    assert pd.read_parquet(next((tmp_path / "r").rglob("items.parquet"))).shape[0] >= 3
    assert "items counted" in res._repr_html_()


def test_merge_keeps_columns_of_empty_tables():
    a = {"t": pd.DataFrame({"x": pd.Series([], dtype=int)})}
    b = {"t": pd.DataFrame({"x": [1, 2]})}
    assert merge([a, b])["t"]["x"].tolist() == [1, 2]
    assert list(merge([a])["t"].columns) == ["x"]
