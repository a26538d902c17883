"""Memory injection and the attention lens on the default model (SmolLM2-135M) with the seed's handwritten pairs."""

from __future__ import annotations

import pytest
import torch

from hopscope.methods.injection import MemoryBank, clean_logits, inject

pytestmark = pytest.mark.default_model

PROMPT = "The first president of the United States fought in the"


def test_fast_paths_agree_and_tau_zero_is_clean(default_model):
    lm = default_model
    mem = MemoryBank(lm).vector("George Washington")
    layers = [0, 9, 9, 20]
    vecs = torch.stack([2 * mem, 0 * mem, 8 * mem, 4 * mem])
    clean = clean_logits(lm, [PROMPT])[0]
    for positions in ("all", "last"):
        fast = inject(lm, PROMPT, layers, vecs, positions=positions, method="shared")
        ref = inject(lm, PROMPT, layers, vecs, positions=positions, method="engine")
        assert (fast - ref).abs().max() < 1e-3
        assert (fast[1] - clean).abs().max() < 1e-3
        assert (fast[2] - clean).abs().max() > 1e-2


def test_quick_study_writes_a_run_folder(default_model, shared_data, tmp_path):
    from hopscope.lenses.attention_lens import AttentionLens
    from hopscope.methods.injection_controls import load_pairs
    from hopscope.methods.injection_study import InjectionSettings, injection_study
    from hopscope.report import RunFolder

    pairs = load_pairs(shared_data / "memory_injections" / "handwritten_obscure_explicit_data.csv")
    assert len(pairs) == 106
    settings = InjectionSettings.quick(n_pairs=6, grid_prompts=3, layer_stride=10, taus=(3.0,), rel=(0.2,),
                                       best_random=1, pos_words=3, projection_pairs=2, lens_steps=6,
                                       lens_train_texts=6, lens_held_texts=3, head_pairs=2)
    headline = injection_study(default_model, pairs, tmp_path / "run", settings=settings)
    run = RunFolder.open(tmp_path / "run")
    assert run.status == "done" and (run.path / "report.html").is_file()
    for table in ("baseline", "projection_heads", "grid", "gold_vs_random", "best_cell_summary", "lens_kl", "heads"):
        assert table in run.table_names()
    grid = run.load_table("grid")
    assert len(grid) == 3 * 2 * 3 * 2  # prompts x layers x steps x (gold + random)
    controls = set(run.load_table("best_cell_summary").control)
    assert {"gold", "random", "gold@explicit", "pos:nouns", "pos:conjunctions"} <= controls
    assert headline["lens held-out KL after"] < headline["lens held-out KL before"]
    lens = AttentionLens.load(run.path / f"lens_l{headline['lens layer']}", default_model)
    assert lens.config.trained["kl_after"] == pytest.approx(headline["lens held-out KL after"])
