"""Tables of a run folder: Parquet round trip, CSV, incremental writing, crash safety and resume."""

from __future__ import annotations

import pandas as pd
import pytest

from hopscope.report import RunFolder

QUERIES = [f"q{i:02d}" for i in range(12)]


def rows_for(q: str) -> list[dict]:
    i = int(q[1:])
    return [{"query_id": q, "layer": layer, "fixed": (i + layer) % 3 == 0, "score": i * 0.5 - layer,
             "note": None if layer else "first"} for layer in range(3)]


def fill(run: RunFolder, fail_at: str | None = None, error: type[BaseException] = RuntimeError,
         calls: list[str] | None = None) -> None:
    """Fill the 'pairs' table in reverse order (so the final sort matters), raising midway at ``fail_at``."""
    with run.table("pairs", key=["query_id", "layer"], chunk_rows=4, progress=False) as tab:
        for q in tab.pending(list(reversed(QUERIES))):
            if calls is not None:
                calls.append(q)
            rows = rows_for(q)
            tab.append(rows[:1])
            if q == fail_at:
                raise error("boom")
            tab.append(rows[1:])


def test_parquet_round_trip_keeps_values_and_dtypes(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    df = pd.DataFrame({"query_id": ["b", "a"], "layer": [3, 1], "prob": [0.25, 0.5], "ok": [True, False],
                       "text": ["x <y>", None]})
    path = run.write_table("summary", df, key=["query_id"])
    assert path == tmp_path / "run" / "tables" / "summary.parquet"
    back = run.load_table("summary")
    expected = df.sort_values("query_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["layer"].dtype.kind == "i" and back["prob"].dtype.kind == "f" and back["ok"].dtype == bool
    assert RunFolder.open(run.path).load_table("summary").equals(back)


def test_meaningful_index_is_kept_as_a_column(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    df = pd.DataFrame({"rate": [0.1, 0.2]}, index=pd.Index([4, 7], name="layer"))
    run.write_table("t", df)
    back = run.load_table("t")
    assert list(back.columns) == ["layer", "rate"] and list(back["layer"]) == [4, 7]


def test_csv_on_request(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run", csv=True)
    run.write_table("summary", pd.DataFrame({"a": [1, 2]}))
    fill(run)
    for name in ("summary", "pairs"):
        csv = pd.read_csv(run.path / "tables" / f"{name}.csv")
        assert len(csv) == len(run.load_table(name))
    plain = RunFolder.create("demo", out=tmp_path / "plain")
    plain.write_table("summary", pd.DataFrame({"a": [1]}))
    assert not (plain.path / "tables" / "summary.csv").exists()
    plain.write_table("other", pd.DataFrame({"a": [1]}), csv=True)
    assert (plain.path / "tables" / "other.csv").exists()


def test_clean_close_merges_parts_sorted_by_key(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    fill(run)
    tables = run.path / "tables"
    assert sorted(p.name for p in tables.iterdir()) == ["pairs.parquet"]
    df = run.load_table("pairs")
    assert len(df) == 3 * len(QUERIES)
    assert list(df["query_id"]) == sorted(df["query_id"])
    assert list(df.index) == list(range(len(df)))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interruption_keeps_finished_units_and_drops_the_partial_one(tmp_path, error):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(error):
        fill(run, fail_at="q05", error=error)
    kept = run.load_table("pairs")
    finished = [q for q in reversed(QUERIES) if q > "q05"]  # processed before q05 (reverse order)
    assert sorted(kept["query_id"].unique()) == sorted(finished)
    assert "q05" not in set(kept["query_id"])  # its first row was appended, but the unit never finished
    assert (run.path / "tables" / "pairs.parts").is_dir()  # parts stay until a clean close


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_resume_gives_the_same_table_as_an_uninterrupted_run(tmp_path, error):
    reference = RunFolder.create("demo", out=tmp_path / "ref")
    fill(reference)

    with pytest.raises(error):
        with RunFolder.create("demo", out=tmp_path / "run") as run:
            fill(run, fail_at="q04", error=error)
    assert RunFolder.open(run.path).status == ("interrupted" if error is KeyboardInterrupt else "failed")

    calls: list[str] = []
    with RunFolder.resume(tmp_path / "run") as resumed:
        fill(resumed, calls=calls)
    assert calls == [q for q in reversed(QUERIES) if q <= "q04"]  # finished queries are skipped
    pd.testing.assert_frame_equal(resumed.load_table("pairs"), reference.load_table("pairs"))
    assert resumed.status == "done"


def test_interrupted_twice_then_resumed(tmp_path):
    reference = RunFolder.create("demo", out=tmp_path / "ref")
    fill(reference)
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(RuntimeError):
        fill(run, fail_at="q09")
    with pytest.raises(RuntimeError):
        fill(RunFolder.resume(run.path), fail_at="q02")
    fill(RunFolder.resume(run.path))
    pd.testing.assert_frame_equal(RunFolder.open(run.path).load_table("pairs"), reference.load_table("pairs"))


def test_units_without_rows_are_remembered(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with run.table("t", key="query_id", progress=False) as tab:
        for q in tab.pending(["a", "b", "c"]):
            if q != "b":
                tab.append({"query_id": q, "v": 1})
    seen = []
    with RunFolder.resume(run.path).table("t", key="query_id", progress=False) as tab:
        for q in tab.pending(["a", "b", "c", "d"]):
            seen.append(q)
            tab.append({"query_id": q, "v": 2})
    assert seen == ["d"]
    assert list(run.load_table("t")["query_id"]) == ["a", "c", "d"]


def test_appends_outside_pending_are_keyed_by_their_rows(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with run.table("t", key=["query_id"], progress=False) as tab:
        tab.append(pd.DataFrame({"query_id": [2, 1], "v": [0.2, 0.1]}))
    with RunFolder.resume(run.path).table("t", key=["query_id"], progress=False) as tab:
        assert list(tab.pending([1, 2, 3])) == [3]


def test_merge_ignores_parts_already_absorbed(tmp_path):
    """A crash between writing the merged file and deleting the parts must not duplicate rows."""
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(RuntimeError):
        fill(run, fail_at="q03")
    parts = {p.name: p.read_bytes() for p in (run.path / "tables" / "pairs.parts").iterdir()}
    run.tables.consolidate("pairs")
    merged = run.load_table("pairs")
    (run.path / "tables" / "pairs.parts").mkdir()
    for name, data in parts.items():  # the parts "survive" the crash
        (run.path / "tables" / "pairs.parts" / name).write_bytes(data)
    pd.testing.assert_frame_equal(run.load_table("pairs"), merged)
    with RunFolder.resume(run.path).table("pairs", key=["query_id", "layer"], progress=False) as tab:
        tab.append(rows_for("q99"))  # a new part must not reuse an absorbed part's name
    assert len(run.load_table("pairs")) == len(merged) + 3


def test_table_errors_are_clear(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(ValueError, match="key columns"):
        with run.table("t", key=["query_id"], progress=False) as tab:
            tab.append({"id": 1})
    with pytest.raises(ValueError, match="duplicate item key"):
        with run.table("u", key=["query_id"], progress=False) as tab:
            list(tab.pending([1, 2, 1]))
    with pytest.raises(ValueError, match="invalid table name"):
        run.write_table("../evil", pd.DataFrame({"a": [1]}))
    with pytest.raises(KeyError, match="no table named"):
        run.load_table("missing")
    run.write_table("k", pd.DataFrame({"a": [1]}), key=["a"])
    with pytest.raises(ValueError, match="stored with key"):
        run.table("k", key=["b"])


def test_progress_bar_shows_remaining_work(tmp_path, capsys):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with run.table("t", key="query_id", progress=True) as tab:
        for q in tab.pending(["a", "b"]):
            tab.append({"query_id": q})
    with RunFolder.resume(run.path).table("t", key="query_id", progress=True) as tab:
        for q in tab.pending(["a", "b", "c"]):
            tab.append({"query_id": q})
    err = capsys.readouterr().err
    assert "t (2 done before)" in err and "1/1" in err


def test_resume_with_another_key_is_refused_even_before_merging(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(RuntimeError):
        fill(run, fail_at="q05")
    with pytest.raises(ValueError, match="stored with key"):
        RunFolder.resume(run.path).table("pairs", key=["query_id"])
