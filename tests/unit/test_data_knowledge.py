"""Knowledge filter on a tiny model: scoring matches the engine, subsets are right, results are cached."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopscope.data import build_two_hop, classify, knowledge_filter, score_prompts, shortcut_report, subset_counts
from hopscope.data import knowledge as K

PROMPTS = ["The capital of France is", "Nairobi is the capital of", "The capital of France is"]


def test_single_pass_greedy_equals_engine(tiny_gpt2):
    from hopscope.engine import generate, run

    last, tokens = K.greedy_with_logits(tiny_gpt2, PROMPTS[:2], max_new_tokens=4)
    ref = run(tiny_gpt2, PROMPTS[:2], last_only=True).logits
    torch.testing.assert_close(last, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, generate(tiny_gpt2, PROMPTS[:2], max_new_tokens=4, fast=False).as_tensor())


def test_score_prompts_scores_targets(tiny_gpt2):
    first = score_prompts(tiny_gpt2, PROMPTS, [["Paris"], ["Kenya"], ["Paris"]], max_new_tokens=3, progress=False)
    assert list(first.columns) == ["text", "match", "prob", "rank", "alias_rank", "top_token"]
    assert len(first) == 3 and first.loc[0].equals(first.loc[2])  # duplicate prompt, same row
    # use what the model actually says as the target: then it must match and rank first
    said = [t.split()[0] for t in first["text"]]
    again = score_prompts(tiny_gpt2, PROMPTS, [[s] for s in said], max_new_tokens=3, progress=False)
    assert again["match"].all()
    top = score_prompts(tiny_gpt2, PROMPTS, [[t.strip() or "x", "Paris"] for t in first["top_token"]],
                        max_new_tokens=1, progress=False)
    assert (top["alias_rank"] == 0).all() and (top["prob"] > 0).all()
    with pytest.raises(ValueError, match="3 prompts but 1 target"):
        score_prompts(tiny_gpt2, PROMPTS, [["x"]], progress=False)


def _table(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"composition": ["c"] * n, "shortcut_prone": [False] * n}
    for kind in K.PROMPTS:
        base[f"{kind}_match"] = [False] * n
        base[f"{kind}_alias_rank"] = [5] * n
        base[f"{kind}_prompt"] = ["p"] * n
    base.update(cols)
    return pd.DataFrame(base)


def test_classify_puts_queries_in_the_right_subsets():
    t = _table(first_hop_match=[True, True, True, False], second_hop_match=[True, True, True, True],
               composed_match=[True, False, False, True], entity_shortcut_match=[False, False, True, False])
    out = classify(t)
    assert list(out["subset"]) == ["correct", "wrong_no_shortcut", "wrong_shortcut", "hops_unknown"]
    assert list(out["both_hops_known"]) == [True, True, True, False]
    # first-token criterion reads the ranks instead of the generations
    ranks = _table(first_hop_alias_rank=[0], second_hop_alias_rank=[0], composed_alias_rank=[0])
    assert classify(ranks, "first_token")["subset"].tolist() == ["correct"]
    assert classify(ranks, "generation")["subset"].tolist() == ["hops_unknown"]
    # a missing shortcut prompt is never counted as a shortcut
    missing = _table(first_hop_match=[True], second_hop_match=[True], relation_shortcut_match=[True],
                     relation_shortcut_prompt=[None])
    assert classify(missing)["subset"].tolist() == ["wrong_no_shortcut"]


def test_subset_counts_and_shortcut_report():
    t = _table(composition=["a", "a", "b", "b"], first_hop_match=[True] * 4, second_hop_match=[True] * 4,
               composed_match=[True, True, True, False], entity_shortcut_match=[True, True, False, False])
    t = classify(t)
    counts = subset_counts(t)
    assert counts.loc["a", "correct"] == 2 and counts.loc["b", "wrong_no_shortcut"] == 1
    assert counts.loc["total", "n"] == 4
    report = shortcut_report(t).set_index("composition")
    assert report.loc["a", "flagged"] and not report.loc["b", "flagged"]
    assert report.loc["a", "entity_shortcut"] == 1.0 and report.loc["b", "composed"] == 0.5
    assert report.loc["a", "explained_by_shortcut"] == 1.0 and report.loc["b", "explained_by_shortcut"] == 0.0


def test_knowledge_filter_table_and_cache(tiny_gpt2, tmp_path, monkeypatch):
    ds = build_two_hop("capital_country_currency", n=2, k_shot=1) + build_two_hop("city_country_capital", n=1,
                                                                                   k_shot=1)
    from hopscope.data import Dataset

    ds = Dataset(ds)
    table = knowledge_filter(tiny_gpt2, ds, cache_dir=tmp_path, max_new_tokens=2, progress=False)
    assert list(table["qid"]) == [r.qid for r in ds]
    for kind in K.PROMPTS:
        assert {f"{kind}_text", f"{kind}_match", f"{kind}_rank", f"{kind}_ok"} <= set(table.columns)
    assert set(table["subset"]) <= set(K.SUBSETS)
    assert (table["first_hop_rank"] >= 0).all() and table["composed_prob"].between(0, 1).all()
    assert len(list(tmp_path.rglob("*.parquet"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(K, "score_prompts", boom)
    again = knowledge_filter(tiny_gpt2, ds, cache_dir=tmp_path, max_new_tokens=2, progress=False)
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(ValueError, match="needs two-hop queries"):
        knowledge_filter(tiny_gpt2, Dataset([]), cache_dir=tmp_path)
