"""Logit lens and projections."""

from __future__ import annotations

from hopscope.engine import run, run_with_cache
from hopscope.lenses import logit_lens, project


def test_last_layer_lens_equals_model_output(tiny_model):
    lm = tiny_model
    prompt = "The capital of France is"
    _, acts = run_with_cache(lm, [prompt], components=("resid_post",))
    lens_logits = project(lm, acts["resid_post", lm.n_layers - 1][0, -1])
    model_logits = run(lm, [prompt]).logits[0, -1]
    assert (lens_logits - model_logits).abs().max().item() <= 1e-4


def test_logit_lens_table(tiny_llama):
    df = logit_lens(tiny_llama, "The capital of France is", [" Paris"], k=3, components=("resid_post", "mlp_out"))
    assert len(df) == 2 * tiny_llama.n_layers
    assert set(df["component"]) == {"resid_post", "mlp_out"}
    assert df["rank[ Paris]"].between(0, tiny_llama.d_vocab - 1).all()
    assert all(len(t) == 3 for t in df["top_tokens"])
    last = df[(df.component == "resid_post") & (df.layer == tiny_llama.n_layers - 1)].iloc[0]
    logits = run(tiny_llama, ["The capital of France is"]).logits[0, -1]
    assert last["top_tokens"][0] == tiny_llama.tokenizer.decode([int(logits.argmax())])


def test_logit_lens_last_layer_target_rank_and_prob_are_the_models(tiny_model):
    from hopscope.engine import first_token_id, score_tokens

    lm = tiny_model
    prompt = "The capital of France is"
    df = logit_lens(lm, prompt, [" Paris"], components=("resid_post",))
    last = df[df.layer == lm.n_layers - 1].iloc[0]
    s = score_tokens(run(lm, [prompt]).logits[:, -1], [first_token_id(lm.tokenizer, " Paris")])
    assert last["rank[ Paris]"] == int(s["rank"][0])
    assert abs(last["prob[ Paris]"] - float(s["prob"][0])) < 1e-4


def test_logit_lens_rejects_bad_input_in_one_line(tiny_llama):
    import pytest

    with pytest.raises(ValueError, match="not supported; choose from resid_post"):
        logit_lens(tiny_llama, "The capital of France is", components=("resid_mid",))
    with pytest.raises(ValueError, match="target ' ':.*tokenizes to nothing"):
        logit_lens(tiny_llama, "The capital of France is", [" "])
    with pytest.raises(ValueError, match="position 99 is outside"):
        logit_lens(tiny_llama, "The capital of France is", position=99)
