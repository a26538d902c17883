"""Real-text probe items from ProofWriter: statements, useful labels, proof steps; the probe runs on them."""

from pathlib import Path

import pytest

from hopscope.methods.probe import ProbeSettings, extract, proof_steps, proofwriter_items, sentence_spans

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "proofwriter_depth2.jsonl"


@pytest.fixture(scope="module")
def records():
    from hopscope.data.loaders.proofwriter import load_proofwriter

    return list(load_proofwriter(FIXTURE))


def test_sentence_spans():
    text = "A is b. If x then y.  C is d."
    assert [text[a:b] for a, b in sentence_spans(text)] == ["A is b.", "If x then y.", "C is d."]
    assert sentence_spans("Hi.", start=10) == [(10, 13)]


def test_proof_steps_follow_rule_heights():
    tree = {"kind": "rule", "rule_text": "R2.", "children": [
        {"kind": "rule", "rule_text": "R1.", "children": [{"kind": "fact", "text": "F1."}]},
        {"kind": "fact", "text": "F2."}]}
    assert proof_steps(tree) == {"R2.": 2, "R1.": 1, "F1.": 1, "F2.": 2}
    assert proof_steps({"kind": "fact", "text": "F."}) == {"F.": 1}


def test_items_label_the_proof_statements(records):
    items = proofwriter_items(records)
    assert len(items) == 3  # the question without a proof is skipped
    sentences = [items.prompts[2][a:b] for a, b in items.statements[2]]
    assert sentences == ["Anne is big.", "Anne is kind.", "Bob is red.", "If someone is big then they are strong.",
                         "If someone is strong and kind then they are smart."]
    assert items.step[2] == [1, 2, 0, 1, 2] and items.useful[2] == [True, True, False, True, True]
    assert items.step[0] == [0, 0, 1, 0, 0]
    a, b = items.query_chars[1]
    assert items.prompts[1][a:b] == "Anne is strong." and items.targets[1] == " True"
    assert len(proofwriter_items(records, require_proof=False)) == 4


def test_features_of_real_text_statements(tiny_llama, records):
    items = proofwriter_items(records)
    mf = extract(tiny_llama, items, ProbeSettings(query="mean"))
    assert mf.features.values.shape == (3 * 5, tiny_llama.n_layers, 1)
    assert all(b - a > 1 for a, b in mf.spans[0])  # multi-token statements pooled
    assert mf.features.values.max() == pytest.approx(1.0)


def test_cli_probe_on_proofwriter(tiny_llama, tmp_path):
    import typer
    from typer.testing import CliRunner

    from hopscope.cli.probe import register
    from hopscope.report import RunFolder

    folder = tmp_path / "model"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["probe", str(folder), "--proofwriter", str(FIXTURE), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "3 questions" in r.output
    run = RunFolder.open(tmp_path / "run")
    assert {"accuracy", "probe_scores", "layerwise"} <= set(run.table_names())
    assert run.load_table("probe_scores")["task"].tolist() == ["useful", "step"]
