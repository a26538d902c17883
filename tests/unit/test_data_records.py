"""Records and datasets: round trips through JSONL/CSV/Parquet and schema errors that name file, row, field."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hopscope.data import ChoiceQuery, Dataset, ProofQuery, RecordError, SingleHopQuery, TwoHopQuery


def _single(qid: str = "s1") -> SingleHopQuery:
    prompt = "The capital of France is"
    return SingleHopQuery(qid=qid, prompt=prompt, answer="Paris", relation="country_capital", subject="France",
                          subject_span=(15, 21), aliases=["Paris, France"], provenance="test", meta={"k": 1})


def _two() -> TwoHopQuery:
    prompt = "The currency of the country whose capital is Nairobi is the"
    return TwoHopQuery(
        qid="t1", prompt=prompt, first_hop_prompt="Nairobi is the capital of",
        second_hop_prompt="The currency of Kenya is the", e1="Nairobi", e2="Kenya", e3="shilling",
        r1="capital_country", r2="country_currency", e2_aliases=["Republic of Kenya"],
        e3_aliases=["Kenyan shilling"], first_hop_span=(16, 52), e1_span=(45, 52),
        entity_shortcut_prompt="The currency of Nairobi is the", relation_shortcut_prompt=None,
        composition="capital_country_currency")


def _mixed() -> Dataset:
    choice = ChoiceQuery(qid="c1", prompt="Question: 2+2?\nA. 3\nB. 4\nAnswer:", question="2+2?", choices=["3", "4"],
                         labels=["A", "B"], answer_key="B", answer="B", aliases=["4"])
    proof = ProofQuery(qid="p1", prompt="Anne is big.\nQuestion: Anne is big?\nAnswer:", theory="Anne is big.",
                       question="Anne is big.", answer="True", depth=0,
                       proofs=[{"kind": "fact", "id": "triple1", "text": "Anne is big."}])
    return Dataset([_single(), _two(), choice, proof], name="mixed", info={"note": "x"})


def test_two_hop_spans_point_at_the_phrases():
    q = _two()
    assert q.prompt[slice(*q.first_hop_span)] == "the country whose capital is Nairobi"
    assert q.prompt[slice(*q.e1_span)] == "Nairobi"
    assert q.answer == "shilling" and q.all_answers == ["shilling", "Kenyan shilling"]
    assert q.bridge_answers == ["Kenya", "Republic of Kenya"]
    assert q.relation == "capital_country_currency"


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_round_trip_keeps_every_field(tmp_path, suffix):
    ds = _mixed()
    path = ds.save(tmp_path / f"d.{suffix}")
    back = Dataset.load(path)
    assert [r.to_row() for r in back] == [r.to_row() for r in ds]
    assert [type(r) for r in back] == [SingleHopQuery, TwoHopQuery, ChoiceQuery, ProofQuery]
    assert back.name == "mixed" and back.info == {"note": "x"}
    assert back.fingerprint() == ds.fingerprint()


def test_span_outside_prompt_is_rejected_on_construction():
    with pytest.raises(RecordError, match="subject_span") as err:
        SingleHopQuery(qid="a", prompt="short", answer="x", relation="r", subject="s", subject_span=(2, 40))
    assert err.value.field == "subject_span"


def test_span_covering_the_wrong_text_is_rejected():
    with pytest.raises(RecordError, match="covers 'capit'"):
        SingleHopQuery(qid="a", prompt="The capital of France is", answer="Paris", relation="r",
                       subject="France", subject_span=(4, 9))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_missing_field_names_file_row_and_field(tmp_path):
    rows = [_single("a").to_row(), _single("b").to_row()]
    del rows[1]["answer"]
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, rows)
    with pytest.raises(RecordError) as err:
        Dataset.load(path)
    e = err.value
    assert (e.file, e.row, e.field) == (str(path), 2, "answer")
    assert str(e).startswith(f"{path}, row 2, field 'answer'")


def test_jsonl_wrong_type_names_field(tmp_path):
    row = _single().to_row()
    row["subject_span"] = "not a span"
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [row])
    with pytest.raises(RecordError, match=r"row 1, field 'subject_span': not valid JSON"):
        Dataset.load(path)


def test_jsonl_broken_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_single().to_row()) + "\n\n{oops\n")
    with pytest.raises(RecordError, match=r"bad.jsonl, row 3: not valid JSON"):
        Dataset.load(path)


def test_unknown_kind_and_duplicate_ids(tmp_path):
    row = _single().to_row()
    path = tmp_path / "kind.jsonl"
    _write_jsonl(path, [{**row, "kind": "three_hop"}])
    with pytest.raises(RecordError, match="field 'kind': unknown kind 'three_hop'"):
        Dataset.load(path)
    _write_jsonl(path, [row, row])
    with pytest.raises(RecordError, match=r"row 2, field 'qid': duplicate qid 's1' \(first at row 1\)"):
        Dataset.load(path)


def test_rows_without_kind_use_the_default(tmp_path):
    row = _single().to_row()
    del row["kind"]
    path = tmp_path / "nokind.jsonl"
    _write_jsonl(path, [row])
    with pytest.raises(RecordError, match="unknown kind None"):
        Dataset.load(path)
    assert isinstance(Dataset.load(path, kind="single_hop")[0], SingleHopQuery)


def test_parquet_bad_row_is_named(tmp_path):
    rows = [r.to_row() for r in (_two(),)] * 3
    rows = [dict(r, qid=f"t{i}") for i, r in enumerate(rows)]
    rows[2]["e2"] = None
    frame = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(RecordError) as err:
        Dataset.load(path)
    assert (err.value.row, err.value.field) == (3, "e2")


def test_csv_alias_list_strings_are_parsed_and_bad_ones_named(tmp_path):
    path = tmp_path / "d.csv"
    base = {"kind": "single_hop", "qid": "a", "prompt": "The capital of Kenya is", "answer": "Nairobi",
            "relation": "r", "subject": "Kenya", "aliases": "['Nairobi City', \"Nai'robi\"]"}
    pd.DataFrame([base]).to_csv(path, index=False)
    assert Dataset.load(path)[0].aliases == ["Nairobi City", "Nai'robi"]
    pd.DataFrame([base, {**base, "qid": "b", "aliases": "[Nairobi City]"}]).to_csv(path, index=False)
    with pytest.raises(RecordError, match=r"row 2, field 'aliases'.*not quoted"):
        Dataset.load(path)


def test_choice_and_proof_checks():
    with pytest.raises(RecordError, match="answer_key"):
        ChoiceQuery(qid="c", prompt="p", question="q", choices=["x"], labels=["A"], answer_key="B", answer="B")
    with pytest.raises(RecordError, match="depth"):
        ProofQuery(qid="p", prompt="p", theory="t", question="q", answer="True", depth=-1)


def test_take_is_balanced_over_relations_and_keeps_order():
    recs = [SingleHopQuery(qid=f"{rel}{i}", prompt="p", answer="a", relation=rel, subject="s")
            for rel in ("x", "y") for i in range(5)]
    ds = Dataset(recs)
    assert [r.qid for r in ds.take(4)] == ["x0", "y0", "x1", "y1"]
    assert [r.qid for r in ds.take(3, balanced=False)] == ["x0", "x1", "x2"]
    assert ds.take(4, seed=1).fingerprint() == ds.take(4, seed=1).fingerprint()
    assert len(ds.take(None)) == 10
