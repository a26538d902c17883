"""Memory injection and the attention lens on the default model (SmolLM2-135M): the staircase equals full-depth
injection, tau 0 is the clean pass, and a quick run writes a run folder with its three claims."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import Site, add, run
from hopscope.methods.injection.grid import Where, injected_logits
from hopscope.methods.injection.memories import MemoryBank, make_memory
from hopscope.methods.injection.pairs import fed_prompt, query_start

pytestmark = pytest.mark.default_model

PROMPT = "The capital of France is Paris.\nThe first president of the United States fought in the"


def test_staircase_injection_equals_full_depth_and_tau_zero_is_clean(default_model):
    lm = default_model
    prompt = fed_prompt(lm, PROMPT, True)
    mem = MemoryBank(lm).vectors([make_memory(lm, "gold", 0, "George Washington")])[0]
    layers = [0, 9, 9, 20, 29]
    vecs = torch.stack([2 * mem, 0 * mem, 8 * mem, 4 * mem, 15 * mem])
    n = len(lm.to_ids(prompt))
    for positions in ("all", "query", "last"):
        where = Where.of(positions, n, query_start(lm, prompt))
        clean, fast = injected_logits(lm, prompt, layers, vecs, where)
        rows = [[add(Site(l, "attn_out", where.position), v)] for l, v in zip(layers, vecs)]
        naive = run(lm, [prompt] * len(rows), rows, last_only=True, share_prefix=False).logits
        assert (fast - naive).abs().max() < 1e-3, positions
        assert (fast[1] - clean).abs().max() < 1e-3
        assert (fast[2] - clean).abs().max() > 1e-2


def test_quick_run_writes_a_run_folder_with_its_claims(default_model, tmp_path):
    from hopscope.methods.injection import Settings, run as run_injection
    from hopscope.report import RunFolder

    s = Settings.quick(n_pairs=8, search_prompts=3, lens_steps=20, lens_train_texts=8, lens_held_texts=4)
    res = run_injection(default_model, None, s, run_folder=tmp_path / "run", progress=False)
    folder = RunFolder.open(tmp_path / "run")
    assert folder.status == "done" and (folder.path / "report.html").is_file()
    assert set(res.claims["id"]) == {"inj.gold_beats_random", "inj.few_heads", "lens.beats_baseline"}
    texts = res.tables["lens_texts"]
    assert texts["kl_lens"].mean() < texts["kl_untrained"].mean()
    assert {"gold", "random", "pos:nouns", "other_bridge"} <= set(res.tables["controls"]["memory_kind"])
