"""ProofWriter for MechanisticProbe: depth-in-tree labels, the paper's subset, k-shot prompts, theory-grouped
folds, True/False accuracy, the corruption, and the whole probe on a tiny Llama."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hopscope.data.loaders.proofwriter import load_proofwriter, parse_proofs, statement_depths
from hopscope.methods.probe import Settings, run
from hopscope.methods.probe.answers import score
from hopscope.methods.probe.classifier import make_folds
from hopscope.methods.probe.proofwriter import (
    negated, proofwriter_questions, sentence_spans, theory_group, usable,
)
from hopscope.methods.probe.questions import ProbeQuestion

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "proofwriter_depth2.jsonl"
NAMES = ["Anne", "Bob", "Carl", "Dave", "Erin", "Fiona", "Gary", "Harry", "Iris", "Jack", "Kim", "Liam"]


def theories(n: int) -> list[dict]:
    """``n`` ProofWriter theories in the dataset's format (two people each), with proofs of depth 0 to 2."""
    out = []
    for i in range(n):
        a, b = NAMES[i % len(NAMES)], NAMES[(i + 5) % len(NAMES)]
        t = {"triple1": f"{a} is big.", "triple2": f"{a} is kind.", "triple3": f"{b} is red.",
             "triple4": f"{b} is cold." if i % 2 else f"{b} is round."}
        r = {"rule1": "If someone is big then they are strong.",
             "rule2": "If someone is strong and kind then they are smart.",
             "rule3": "If someone is red then they are young."}
        theory = " ".join(list(t.values()) + list(r.values()))
        q = {"Q1": {"question": f"{b} is red.", "answer": True, "QDep": 0, "proofs": "[(triple3)]"},
             "Q2": {"question": f"{a} is strong.", "answer": True, "QDep": 1, "proofs": "[((triple1) -> rule1)]"},
             "Q3": {"question": f"{a} is smart.", "answer": True, "QDep": 2,
                    "proofs": "[((((triple1) -> rule1) triple2) -> rule2)]"},
             "Q4": {"question": f"{b} is young.", "answer": True, "QDep": 1, "proofs": "[((triple3) -> rule3)]"},
             "Q5": {"question": f"{a} is young.", "answer": False, "QDep": 0, "proofs": "[@0: CWA]"},
             "Q6": {"question": f"{a} is not strong.", "answer": False, "QDep": 1, "proofs": "[((triple1) -> rule1)]"},
             "Q7": {"question": f"{b} is not red.", "answer": False, "QDep": 0, "proofs": "[(triple3)]"}}
        out.append({"id": f"T{i}", "theory": theory, "triples": {k: {"text": v} for k, v in t.items()},
                    "rules": {k: {"text": v} for k, v in r.items()}, "questions": q})
    return out


@pytest.fixture(scope="module")
def theory_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pw") / "theories.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in theories(12)))
    return path


@pytest.fixture(scope="module")
def records(theory_file):
    return list(load_proofwriter(theory_file))


def test_depth_one_proof_gives_fact_and_rule_different_depths():
    tree = parse_proofs("[((triple1) -> rule1)]", {"triple1": "F1."}, {"rule1": "R1."})[0]
    assert statement_depths(tree) == {"R1.": 0, "F1.": 1}  # the root rule, and the fact one edge below it


def test_depth_three_proof_labels_are_distances_to_the_root():
    tree = parse_proofs("[((((((triple1) -> rule1) triple2) -> rule2) triple3) -> rule3)]",
                        {f"triple{i}": f"F{i}." for i in (1, 2, 3)}, {f"rule{i}": f"R{i}." for i in (1, 2, 3)})[0]
    assert statement_depths(tree) == {"R3.": 0, "R2.": 1, "F3.": 1, "R1.": 2, "F2.": 2, "F1.": 3}
    # a statement on two paths takes its longest one (the paper's depth_dict)
    tree = parse_proofs("[((((triple1) -> rule1) triple1) -> rule2)]", {"triple1": "F1."},
                        {"rule1": "R1.", "rule2": "R2."})
    assert statement_depths(tree[0])["F1."] == 2
    assert statement_depths(parse_proofs("[(triple3)]", {"triple3": "F3."})[0]) == {"F3.": 0}


def test_the_papers_subset(records):
    by_q = {r.qid.rsplit(":", 1)[1]: r for r in records if r.qid.startswith("proofwriter:T0:")}
    assert usable(by_q["Q1"], 1) and usable(by_q["Q2"], 1) and usable(by_q["Q4"], 1)
    assert not usable(by_q["Q3"], 1) and usable(by_q["Q3"], None)  # depth 2 is outside QDep <= 1
    assert not usable(by_q["Q5"], 1)  # no parsed proof
    fixture = list(load_proofwriter(FIXTURE))
    assert sum(usable(r, 1) for r in fixture) == 2


def test_depth_one_subset_has_two_step_classes(records):
    qs = proofwriter_questions(records, shots=0, max_depth=1)
    assert len(qs) == 5 * 12
    depths = {d for q in qs for d in q.depth if d >= 0}
    assert depths == {0, 1}  # rules and the facts they consume differ (the old rule-height labels gave one class)
    q = next(q for q in qs if q.qid == "proofwriter:T0:Q2")
    assert q.prompt.endswith("Anne is strong.: True or False?")  # the paper's format
    sent = [q.prompt[a:b] for a, b in q.statements]
    assert sent[:4] == ["Anne is big.", "Anne is kind.", "Fiona is red.", "Fiona is round."]
    assert q.depth == (1, -1, -1, -1, 0, -1, -1)
    assert q.answer == " True" and q.alternative == " False"
    q = next(q for q in qs if q.qid == "proofwriter:T0:Q6")
    assert q.answer == " False" and q.alternative == " True" and q.depth == (1, -1, -1, -1, 0, -1, -1)


def test_k_shot_prompts_use_other_theories(records):
    qs = proofwriter_questions(records, shots=4, max_depth=1, seed=3)
    for q in qs[:10]:
        lines = q.prompt.split("\n")
        assert len(lines) == 5 and all(l.endswith(("? True", "? False")) for l in lines[:4])
        examples = [l.rsplit(":", 1)[0] for l in lines[:4]]
        theory = q.prompt[q.statements[0][0]:q.statements[-1][1]]
        assert all(theory not in e for e in examples)
        a, b = q.query
        assert q.prompt[a:b].endswith(": True or False?") and q.prompt.endswith(q.prompt[a:b])
    assert proofwriter_questions(records, shots=4, seed=3) == qs  # seeded
    shared = proofwriter_questions(records, shots=4, max_depth=1, seed=3, shared_examples=True)
    prefix = shared[0].prompt[:shared[0].statements[0][0]]
    assert prefix.count("\n") == 4 and all(q.prompt.startswith(prefix) for q in shared)
    assert len(shared) == 5 * (12 - 4)  # the examples' four theories are not probed
    assert all(q.prompt[q.statements[0][0]:q.statements[-1][1]] not in prefix for q in shared)
    with pytest.raises(ValueError, match="no ProofWriter question is usable"):
        proofwriter_questions([r for r in records if not usable(r, 1)], max_depth=1)
    with pytest.raises(ValueError, match="examples from other theories"):
        proofwriter_questions(list(load_proofwriter(FIXTURE)), shots=4)


def test_folds_never_split_a_theory(records):
    qs = proofwriter_questions(records, shots=0, max_depth=None)
    groups = np.array([q.group for q in qs for _ in q.statements])
    assert len(set(groups)) == 12 and len(qs) == 6 * 12  # several questions per theory
    for seed in range(3):
        folds = make_folds(groups, 5, seed)
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
        for test in folds:
            train = np.setdiff1d(np.arange(len(groups)), test)
            assert not set(groups[test]) & set(groups[train])
    assert theory_group("A. B.") == theory_group("A. B.") != theory_group("A. C.")


def test_true_false_accuracy_compares_the_two_answers_only(tiny_llama):
    tok = tiny_llama.tokenizer
    from hopscope.engine import first_token_id

    t, f = first_token_id(tok, " True"), first_token_id(tok, " False")
    logits = torch.zeros(3, tiny_llama.d_vocab)
    logits[:, 5] = 10.0  # another token is top-1 everywhere: full-vocabulary top-1 would call all three wrong
    logits[0, t], logits[0, f] = 2.0, 1.0   # answer True, True beats False: correct
    logits[1, t], logits[1, f] = 1.0, 3.0   # answer True, False wins: wrong
    logits[2, t], logits[2, f] = 0.5, 0.2   # answer False, True wins: wrong
    qs = [ProbeQuestion(f"q{i}", "g", "x", (), (), (0, 1), a, b)
          for i, (a, b) in enumerate([(" True", " False"), (" True", " False"), (" False", " True")])]
    out = score(tiny_llama, logits, qs)
    assert out["correct"].tolist() == [True, False, False]
    assert np.allclose(out["margin"], [1.0, -2.0, -0.3])


def test_corruption_inserts_the_papers_statement(records):
    assert negated("Bob is red.") == "That Bob is red is false."
    qs = proofwriter_questions(records, shots=2, max_depth=1, seed=1)
    for q in qs:
        j = q.corrupted_statement
        assert q.depth[j] == -1  # a statement the proof does not use
        a, b = q.statements[j]
        assert q.corrupted == q.prompt[:a] + "That " + q.prompt[a:b - 1] + " is false." + q.prompt[b:]
        others = [q.prompt[x:y] for i, (x, y) in enumerate(q.statements) if i != j]
        assert all(s in q.corrupted for s in others)


def test_sentence_spans():
    text = "A is b. If x then y.  C is d."
    assert [text[a:b] for a, b in sentence_spans(text)] == ["A is b.", "If x then y.", "C is d."]
    assert sentence_spans("Hi.", start=10) == [(10, 13)]


def test_the_probe_on_proofwriter_with_a_tiny_llama(tiny_llama, theory_file):
    s = Settings.quick(task="proofwriter", shots=1, n_permutations=50, n_bootstrap=50)
    assert s.resolved_distance == "manhattan" and s.resolved_query_pool == "max" and s.resolved_normalize == "none"
    res = run(tiny_llama, theory_file, s, progress=False)
    st = res.tables["statements"]
    assert set(st["model"]) == {"model", "random_init_0"}
    assert [c for c in st.columns if c.startswith("L")] == [f"L{l}" for l in range(tiny_llama.n_layers)]
    sc = res.tables["probe_scores"].set_index(["task", "model"])
    assert sc.loc[("step", "model"), "n_rows"] == (st[(st.model == "model")].useful).sum()
    assert list(res.claims["id"]) == ["probe.useful", "probe.step"]
    # folds are grouped by theory: every statement of a theory (over all its questions) is in one fold
    pred = res.tables["probe_predictions"].merge(st[st.model == "model"][["qid", "statement", "group"]])
    assert pred.groupby(["task", "group"])["fold"].nunique().max() == 1
    assert pred.groupby(["task", "group"])["qid"].nunique().max() > 1  # ... though theories have several questions
    c = res.tables["corruption"]
    assert len(c) == len(res.tables["answers"].query("model == 'model'"))
    assert "head_attention" not in res.tables and "masking" not in res.tables


@pytest.mark.default_model
def test_the_probe_on_proofwriter_with_the_default_model(default_model, theory_file):
    s = Settings.quick(task="proofwriter", shots=2, n_questions=24, n_permutations=100, n_bootstrap=100)
    res = run(default_model, theory_file, s, progress=False)
    st = res.tables["statements"]
    assert sum(c.startswith("L") for c in st.columns) == default_model.n_layers
    acc = res.tables["answers"].groupby("model")["correct"].mean()
    assert 0.0 <= acc["model"] <= 1.0 and len(res.tables["answers"]) == 2 * 24
    assert res.claims["n"].tolist() == [24, 24]
