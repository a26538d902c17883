"""The top-level API a notebook uses: lazy exports, one function per analysis, and TransformerLens hook names.

- ``import hopscope`` imports nothing heavy; every exported name is the engine's / models' own object.
- ``hopscope.backpatch|inject|recall|probe|repair`` pass the Settings built from ``settings`` and
  ``**options`` (fields of the analysis's Settings) to ``hopscope.methods.<name>.run``, unchanged otherwise,
  and unknown options are one error listing the valid fields; a real run equals the method's own run.
- Every name in ``HOOK_NAMES`` names the hopscope component it maps to, on a tiny model of every family,
  both when recorded and when indexed, and its tensor is what TransformerLens means by that name (checked
  against HF's own hidden states and attention weights and against exact sublayer identities).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

import hopscope
from hopscope import engine, lenses, models, results
from hopscope.engine import HOOK_NAMES, Site, as_site

PROMPT = "The capital of France is"
TOL = 1e-5


# ---- exports --------------------------------------------------------------------------------------------------
ENGINE_NAMES = ("Site", "run", "run_with_cache", "prompt_pass", "generate", "cache", "replace", "add", "scale",
                "zero_ablate", "mean_ablate", "knockout", "transform", "weights_changed")


def test_top_level_exports_are_the_libraries_own_objects():
    for name in ENGINE_NAMES:
        assert getattr(hopscope, name) is getattr(engine, name), name
    assert hopscope.load_model is models.load_model and hopscope.wrap is models.wrap
    assert hopscope.LoadedModel is models.LoadedModel
    assert hopscope.logit_lens is lenses.logit_lens and hopscope.Result is results.Result
    assert set(hopscope.ANALYSES) == {"backpatch", "inject", "recall", "probe", "repair"}
    for name in hopscope.__all__:
        assert hasattr(hopscope, name), name
    from hopscope import Site as S, wrap as w  # from-imports resolve lazily too

    assert S is Site and w is models.wrap
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        hopscope.nonexistent  # noqa: B018


def test_import_hopscope_imports_nothing_heavy():
    code = ("import sys, hopscope; heavy = ['torch', 'transformers', 'pandas', 'matplotlib', 'hopscope.engine', "
            "'hopscope.methods']; print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- one function per analysis ---------------------------------------------------------------------------------
# every analysis function whose package is in this build (repair joined last)
FUNCTIONS = {fn: pkg for fn, pkg in hopscope.ANALYSES.items() if importlib.util.find_spec(f"hopscope.methods.{pkg}")}


def _method(package: str):
    return importlib.import_module(f"hopscope.methods.{package}")


@pytest.fixture
def recorded(monkeypatch):
    """Replace each analysis's ``run`` by a recorder: ``recorded[package]`` holds the arguments it got."""
    calls: dict[str, dict] = {}
    for fn, package in FUNCTIONS.items():
        def fake(lm, data=None, settings=None, *, run_folder=None, progress=True, _package=package):
            calls[_package] = dict(lm=lm, data=data, settings=settings, run_folder=run_folder, progress=progress)
            return "result"
        monkeypatch.setattr(_method(package), "run", fake)
    return calls


@pytest.mark.parametrize("fn", sorted(FUNCTIONS))
def test_each_analysis_function_passes_its_settings_to_the_methods_run(fn, recorded, tiny_llama, tmp_path):
    package = FUNCTIONS[fn]
    kind = _method(package).Settings
    call = getattr(hopscope, fn)
    assert call(tiny_llama, ["data"], run_folder=tmp_path, progress=False) == "result"
    got = recorded[package]
    assert got["lm"] is tiny_llama and got["data"] == ["data"] and got["run_folder"] == tmp_path
    assert got["progress"] is False and got["settings"] == kind()  # None = the paper's full-size defaults
    for size in ("quick", "study"):
        call(tiny_llama, settings=size)
        assert recorded[package]["settings"] == getattr(kind, size)()
    mine = kind.quick()
    call(tiny_llama, settings=mine)
    assert recorded[package]["settings"] is mine  # a Settings passes through untouched
    call(tiny_llama, settings="quick", seed=7)
    assert recorded[package]["settings"] == dataclasses.replace(kind.quick(), seed=7)
    call(tiny_llama, settings={"seed": 5})
    assert recorded[package]["settings"] == dataclasses.replace(kind(), seed=5)


def test_options_coerce_lists_and_reach_into_nested_settings(recorded, tiny_llama):
    from hopscope.methods.hopping import Settings

    hopscope.backpatch(tiny_llama, settings="quick", controls=["forward"], knowledge={"queries_per_composition": 2})
    got = recorded["hopping"]["settings"]
    assert got.controls == ("forward",) and got.knowledge.queries_per_composition == 2
    assert got.knowledge.k_shot == Settings.quick().knowledge.k_shot  # the rest of the nested settings kept
    assert got == dataclasses.replace(Settings.quick(), controls=("forward",),
                                      knowledge=dataclasses.replace(Settings.quick().knowledge,
                                                                    queries_per_composition=2))


def test_the_probe_may_train_its_own_model(recorded):
    hopscope.probe(settings="quick")
    assert recorded["probe"]["lm"] is None


def test_unknown_options_list_the_valid_fields(tiny_llama):
    from hopscope.methods.recall import Settings

    with pytest.raises(ValueError) as err:
        hopscope.recall(tiny_llama, settings="quick", relaton="capital")
    msg = str(err.value)
    assert "hopscope.recall() has no option 'relaton' (did you mean 'relation'?)" in msg and "\n" not in msg
    assert all(f.name in msg for f in dataclasses.fields(Settings))
    with pytest.raises(ValueError, match="option 'knowledge' has no option 'k_shots' .*did you mean 'k_shot'"):
        hopscope.backpatch(tiny_llama, knowledge={"k_shots": 2})
    with pytest.raises(ValueError, match="settings='fast' is not a size; give 'quick' or 'study'"):
        hopscope.inject(tiny_llama, settings="fast")
    with pytest.raises(TypeError, match="settings must be a hopscope.methods.recall"):
        hopscope.recall(tiny_llama, settings=3)


def test_a_model_that_is_not_loaded_by_hopscope_is_one_clear_error(tiny_llama):
    with pytest.raises(TypeError, match=r"takes a model from hopscope.load_model\(...\) or hopscope.wrap\(...\), "
                                        r"not LlamaForCausalLM \(wrap an HF model with hopscope.wrap"):
        hopscope.recall(tiny_llama.model)
    with pytest.raises(TypeError, match="not str"):
        hopscope.backpatch("smollm2-135m")


def test_repair_runs_the_repair_analysis_or_says_it_is_not_there(tiny_llama, monkeypatch):
    try:
        module = _method("repair")
    except ModuleNotFoundError:
        with pytest.raises(NotImplementedError, match=r"hopscope.repair\(\): the repair analysis"):
            hopscope.repair(tiny_llama)
        return
    monkeypatch.setattr(module, "run", lambda lm, data=None, settings=None, **kw: settings)
    assert hopscope.repair(tiny_llama, settings="quick") == module.Settings.quick()


def test_a_real_run_equals_the_methods_run_and_is_one_result(tiny_llama, tmp_path):
    from hopscope.methods import recall

    ours = hopscope.recall(tiny_llama, settings="quick", n=6, progress=False)
    theirs = recall.run(tiny_llama, settings=dataclasses.replace(recall.Settings.quick(), n=6), progress=False)
    assert isinstance(ours, hopscope.Result) and ours.settings["n"] == 6
    assert set(ours.tables) == set(theirs.tables)
    for name, df in ours.tables.items():
        pd.testing.assert_frame_equal(df, theirs.tables[name], obj=name)
    assert ours.tables["prompts"]["qid"].nunique() == 6  # the option reached the analysis
    html = ours._repr_html_()
    assert "<h3>recall</h3>" in html and "verdict" in html and "prompts (6 rows)" in html
    assert "model: tiny-llama (llama, 3 layers)" in html and ours.claims["statement"].iloc[0][:40] in html
    folder = ours.save(tmp_path / "run")
    assert (folder / "report.html").is_file() and (folder / "claims.parquet").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["name"] == tiny_llama.name
    saved = pd.read_parquet(folder / "claims.parquet")
    assert saved["id"].tolist() == ours.claims["id"].tolist() and len(saved) > 0
    assert saved["verdict"].tolist() == ours.claims["verdict"].tolist()
    assert len(pd.read_parquet(folder / "tables" / "prompts.parquet")) == 6


# ---- TransformerLens hook names ---------------------------------------------------------------------------------
def _names(lm) -> dict[str, tuple[str, int]]:
    """Every hook name of ``lm`` -> the (component, layer) key it must index."""
    out = {}
    for pattern, comp in HOOK_NAMES.items():
        if comp == "resid_mid" and lm.adapter.parallel_residual:
            continue
        if "{l}" in pattern:
            out.update({pattern.format(l=l): (comp, l) for l in range(lm.n_layers)})
        else:
            out[pattern] = (comp, 0 if comp == "embed" else lm.n_layers - 1)
    return out


def test_every_hook_name_is_its_component_both_ways(tiny_model):
    lm = tiny_model
    names = _names(lm)
    comps = sorted({c for c, _ in names.values()})
    logits_h, by_hook = hopscope.run_with_cache(lm, PROMPT, components=tuple(names))
    logits_c, by_comp = hopscope.run_with_cache(lm, PROMPT, components=comps)
    assert torch.equal(logits_h, logits_c)
    for name, key in names.items():
        assert torch.equal(by_hook[name], by_comp[key]), name  # recorded by hook name, indexed by component ...
        assert torch.equal(by_comp[name], by_hook[key]), name  # ... and the other way round
        assert name in by_comp and key in by_hook


def test_hook_names_mean_what_transformer_lens_means(tiny_model, tiny_hf, tiny_hf_eager):
    """resid_pre / resid_post are HF's hidden states, hook_embed the input of block 0, hook_pattern HF's eager
    attention, per-head results plus the output bias sum to hook_attn_out, the MLP's output projection of
    mlp.hook_post is hook_mlp_out, the sublayer outputs add up to the residual stream, and
    ln_final.hook_normalized is the final norm of the last resid_post.

    One named difference from TransformerLens: in the families with a norm after each sublayer (Gemma 2/3,
    OLMo 2) hook_attn_out / hook_mlp_out are the sublayer's output *before* that norm (TransformerLens hooks
    them after it); the residual stream adds ``adapter.attn_to_resid[l](attn_out)``, as checked here."""
    lm, ad = tiny_model, tiny_model.adapter
    L = lm.n_layers
    _, acts = hopscope.run_with_cache(lm, PROMPT, components=tuple(_names(lm)))
    ids = lm.encode(PROMPT)
    with torch.no_grad():
        hidden = tiny_hf(input_ids=ids.input_ids, output_hidden_states=True).hidden_states
        patterns = tiny_hf_eager(input_ids=ids.input_ids, output_attentions=True).attentions
        normed = ad.final_norm(acts[f"blocks.{L - 1}.hook_resid_post"])
    close = lambda a, b: torch.allclose(a.float(), b.float(), atol=TOL, rtol=1e-4)  # noqa: E731
    assert close(acts["hook_embed"], hidden[0])
    assert close(acts["ln_final.hook_normalized"], normed)
    post_norms = lm.family in ("gemma2", "gemma3_text", "olmo2")
    assert post_norms == (ad.attn_to_resid[0] is not ad.attn[0])
    for l in range(L):
        pre, post = acts[f"blocks.{l}.hook_resid_pre"], acts[f"blocks.{l}.hook_resid_post"]
        attn, mlp = acts[f"blocks.{l}.hook_attn_out"], acts[f"blocks.{l}.hook_mlp_out"]
        assert close(pre, hidden[l]), l
        if l < L - 1:  # HF's last hidden state is after the final norm
            assert close(post, hidden[l + 1]), l
        assert close(acts[f"blocks.{l}.attn.hook_pattern"], patterns[l]), l
        bias = ad.out_proj_bias(l)
        heads = acts[f"blocks.{l}.attn.hook_result"].sum(2) + (bias if bias is not None else 0)
        assert close(heads, attn), l
        with torch.no_grad():
            assert close(ad.mlp_down[l](acts[f"blocks.{l}.mlp.hook_post"]), mlp), l
            if post_norms:
                attn, mlp = ad.attn_to_resid[l](attn), ad.mlp_to_resid[l](mlp)
        assert close(post, pre + attn + mlp), l
        if not ad.parallel_residual:
            assert close(acts[f"blocks.{l}.hook_resid_mid"], pre + attn), l


def test_hook_names_work_in_every_intervention(tiny_llama):
    lm = tiny_llama
    _, acts = hopscope.run_with_cache(lm, PROMPT, components=("resid_post",))
    v = acts["resid_post", 0][0, 0]  # the first position's: at the last one, replacing resid_pre 1 would be a self-patch
    pairs = []
    for pattern, comp in HOOK_NAMES.items():
        if comp == "attn_pattern":
            continue
        name = pattern.format(l=1)
        site = as_site(name)
        assert site == Site(site.layer, comp, -1) and (name == site.hook_name or "{l}" not in pattern)
        pairs.append(([hopscope.zero_ablate(name)], [hopscope.zero_ablate(site)]))
        if comp in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed", "final_norm"):
            pairs.append(([hopscope.replace(name, v)], [hopscope.replace(site, v)]))
            pairs.append(([hopscope.add(name, v)], [hopscope.add(site, v)]))
        pairs.append(([hopscope.scale(name, 2.0)], [hopscope.scale(site, 2.0)]))
        pairs.append(([hopscope.transform(name, lambda x, row: -x)], [hopscope.transform(site, lambda x, row: -x)]))
    rows = [a for a, _ in pairs] + [b for _, b in pairs] + [[]]
    logits = hopscope.prompt_pass(lm, PROMPT, rows).logits
    n = len(pairs)
    # the same interventions, by name and by Site; rows that join the staircase at different blocks run in
    # different sub-batches, so equal up to float32 reduction order
    assert (logits[:n] - logits[n:2 * n]).abs().max().item() <= 1e-6
    clean = logits[-1]
    assert all(not torch.equal(row, clean) for row in logits[:n])  # each intervention changed something
    cached = hopscope.run(lm, PROMPT, [[hopscope.cache("blocks.2.hook_mlp_out")]], last_only=True)
    got = cached.cache[0][Site(2, "mlp_out", -1)]  # [positions, d]; from the cached-prefix path: equal up to float32
    assert torch.allclose(got, acts_of(lm, "mlp_out", 2)[0, -1:], atol=TOL)


def acts_of(lm, comp: str, layer: int) -> torch.Tensor:
    return hopscope.run_with_cache(lm, PROMPT, components=(comp,))[1][comp, layer]


@pytest.mark.parametrize("name, near", [
    ("blocks.1.hook_resid_pst", "blocks.1.hook_resid_post"),
    ("blocks.2.attn.hook_patern", "blocks.2.attn.hook_pattern"),
    ("blocks.0.hook_mlp_output", "blocks.0.hook_mlp_out"),
    ("ln_final.hook_norm", "ln_final.hook_normalized"),
    ("hook_embd", "hook_embed"),
])
def test_an_unknown_hook_name_lists_the_nearest_valid_ones(tiny_llama, name, near):
    _, acts = hopscope.run_with_cache(tiny_llama, PROMPT, components=("resid_post",))
    for attempt in (lambda: acts[name], lambda: hopscope.replace(name, torch.zeros(64)),
                    lambda: hopscope.run_with_cache(tiny_llama, PROMPT, components=(name,))):
        with pytest.raises(ValueError) as err:
            attempt()
        assert f"unknown hook name {name!r}; did you mean {near}" in str(err.value)
        assert "known: blocks.L.hook_resid_pre" in str(err.value)


def test_a_valid_hook_name_out_of_range_or_not_recorded_says_so(tiny_llama):
    with pytest.raises(ValueError, match=r"layer 7 is out of range: .* has 3 layers \(0..2\)"):
        hopscope.run_with_cache(tiny_llama, PROMPT, components=("blocks.7.hook_resid_post",))
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        hopscope.prompt_pass(tiny_llama, PROMPT, [[hopscope.zero_ablate("blocks.7.hook_attn_out")]])
    _, acts = hopscope.run_with_cache(tiny_llama, PROMPT, components=("resid_post",))
    with pytest.raises(KeyError, match="'blocks.1.hook_attn_out' was not recorded; recorded components: resid_post"):
        acts["blocks.1.hook_attn_out"]  # noqa: B018


def test_the_cli_and_the_api_write_the_same_tables(tiny_llama, tmp_path, monkeypatch):
    """The quick start's promise: a notebook call gives the tables the command writes."""
    from hopscope.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        main(["recall", "--model", "tiny:llama", "--quick", "--out", str(tmp_path / "cli"), "--no-progress"])
    except SystemExit as done:
        assert done.code in (0, None)
    api = hopscope.recall(tiny_llama, settings="quick", progress=False).save(tmp_path / "api")
    names = sorted(p.name for p in (tmp_path / "cli" / "tables").glob("*.parquet"))
    assert names and names == sorted(p.name for p in (api / "tables").glob("*.parquet"))
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cli" / "tables" / name),
                                      pd.read_parquet(api / "tables" / name), obj=name)
