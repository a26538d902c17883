"""The injection analysis end to end on a tiny GPT-2: the seed's protocol on its handwritten pairs, fixed sizes with
the same seed giving identical tables, an interrupted run resuming to identical tables, the tokenization
settings recorded in config.json, and one-line errors for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hopscope.methods.injection import ANALYSIS, InjectionPair, Settings, load_pairs, run
from hopscope.methods.injection.pairs import world_facts_pairs

SMALL = dict(n_pairs=8, search_prompts=3, pos_words=2, random_memories=2, grid_random=1, projection_pairs=2,
             random_head_sets=3, lens_steps=3, lens_batch=8, lens_train_texts=4, lens_held_texts=2,
             lens_max_tokens=16, lens_corpus="world-facts", shard_size=2)
CLAIMS = {"inj.gold_beats_random", "inj.few_heads", "lens.beats_baseline"}


@pytest.fixture(scope="module")
def pairs():
    return world_facts_pairs(per_composition=3, k_shot=1)


def _settings(**kw) -> Settings:
    return Settings.quick(**{**SMALL, **kw})


def _assert_same_tables(a, b):
    assert set(a.tables) == set(b.tables)
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], obj=name)


def test_the_seed_protocol_on_its_handwritten_pairs(tiny_gpt2, shared_data):
    lm = tiny_gpt2
    data = load_pairs("handwritten")
    assert len(data) == 106
    ragged = next(p for p in data if p.bridge.endswith(" "))  # the seed feeds cells unstripped
    assert ragged.bridge == "Argonne National Laboratory "
    s = Settings(n_pairs=5, search_prompts=3, pos_words=1, random_memories=1, projection=False, lens=False,
                 random_head_sets=2)
    assert (s.source, s.memory_space, s.memory_bos, s.prompt_bos, s.positions) == (
        "unembed_processed", False, False, True, "all")
    res = run(lm, data, s, progress=False)
    grid = res.tables["grid"]
    assert sorted(grid["tau"].unique()) == [float(t) for t in range(1, 16)]
    assert sorted(grid["layer"].unique()) == list(range(lm.n_layers))
    assert len(grid) == 3 * lm.n_layers * 15 * 2  # search prompts x layers x taus x (gold + random)
    p = res.tables["pairs"].iloc[0]
    assert p["n_tokens"] == len(lm.to_ids(p["obscure"])) + 1  # the BOS
    assert p["memory_token_ids"] == " ".join(map(str, dict.fromkeys(
        lm.tokenizer(p["bridge"], add_special_tokens=False)["input_ids"])))
    assert set(res.claims["id"]) == {"inj.gold_beats_random", "inj.few_heads"}


def test_same_seed_same_tables_and_the_claims(tiny_gpt2, pairs):
    a = run(tiny_gpt2, pairs, _settings(), progress=False)
    b = run(tiny_gpt2, pairs, _settings(), progress=False)
    _assert_same_tables(a, b)
    assert set(a.claims["id"]) == CLAIMS
    ctrl = set(a.tables["controls"]["memory_kind"])
    assert {"gold", "random", "other_bridge", "pos:nouns", "pos:conjunctions"} <= ctrl
    held = set(a.tables["pairs"].query("split == 'held-out'")["qid"])
    assert set(a.tables["few_heads"]["qid"]) == held and not set(a.tables["grid"]["qid"]) & held
    assert a.claims.set_index("id").loc["inj.gold_beats_random", "n"] == len(held)
    c = run(tiny_gpt2, pairs, _settings(seed=1), progress=False)
    assert not a.tables["pairs"]["qid"].equals(c.tables["pairs"]["qid"])


def test_an_interrupted_run_resumes_to_identical_tables(tiny_gpt2, pairs, tmp_path, monkeypatch):
    ref = run(tiny_gpt2, pairs, _settings(), progress=False)
    stage = next(st for st in ANALYSIS.stages if st.name == "controls")
    real = stage.work

    def crash(lm, ctx, shard):
        if shard.index == 1:
            raise RuntimeError("simulated crash")
        return real(lm, ctx, shard)

    monkeypatch.setattr(stage, "work", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_gpt2, pairs, _settings(), run_folder=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "parts" / "controls" / "00000" / "_done").is_file()
    monkeypatch.setattr(stage, "work", real)
    res = run(tiny_gpt2, pairs, _settings(), run_folder=tmp_path / "run", progress=False)
    _assert_same_tables(ref, res)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["status"] == "done"
    args = config["args"]
    assert (args["source"], args["memory_space"], args["memory_bos"], args["prompt_bos"]) == (
        "unembed_processed", False, False, True)
    assert (tmp_path / "run" / "report.html").is_file()


def test_bad_input_is_one_clear_error(tiny_gpt2):
    bad = [InjectionPair("x", "The capital of France is", "Paris is", "Paris", "   ")]
    with pytest.raises(ValueError, match="no usable search pair"):
        run(tiny_gpt2, bad, _settings(), progress=False)
    with pytest.raises(ValueError, match="lens_layer 9 is out of range"):
        run(tiny_gpt2, None, _settings(lens_layer=9), progress=False)
    with pytest.raises(ValueError, match="positions must be one of"):
        Settings(positions="first")
    with pytest.raises(ValueError, match="unique"):
        run(tiny_gpt2, [bad[0], bad[0]], _settings(), progress=False)
