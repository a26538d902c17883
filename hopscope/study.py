"""``hopscope study``: a compact run of every analysis on one model, into one run folder and one report.

Each analysis writes a child run folder (``<study>/<analysis>/``) through its own study entry point; the
parent's report gathers every child's sections. A resumed study skips the analyses whose child folder is
finished and resumes the one that was interrupted (its incremental tables skip finished rows).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

ANALYSES = ("knowledge", "backpatch", "inject", "recall", "probe")


@dataclass
class StudySettings:
    """What ``hopscope study`` runs; recorded in the run folder's config."""

    model: str | None = None
    queries: int = 6             # two-hop queries per composition for the knowledge filter
    compositions: tuple[str, ...] = ()  # () = the data layer's default compositions
    relation: str = "capital"    # single-hop relation of the recall analysis
    recall_queries: int = 30
    inject_pairs: int = 16
    backpatch_queries: int = 4   # per group (correct / incorrect composition) for back-patching
    k_shot: int = 3
    only: tuple[str, ...] = ANALYSES
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compositions"], d["only"] = list(self.compositions), list(self.only)
        return d


@dataclass
class Study:
    """State shared by the analyses of one study run."""

    settings: StudySettings
    run: Any
    lm: Any = None
    say: Callable[[str], None] = print
    two_hop: list = field(default_factory=list)


def _two_hop(study: Study) -> list:
    from hopscope.data.builders import DEFAULT_TWO_HOP, build_two_hop

    s = study.settings
    records: list = []
    for comp in (s.compositions or DEFAULT_TWO_HOP):
        records += build_two_hop(comp, n=s.queries, seed=s.seed, k_shot=s.k_shot)
    return records


def _knowledge(study: Study, child) -> dict[str, Any]:
    from hopscope.data.knowledge import accuracy_table, knowledge_filter, subset_counts
    from hopscope.report import bar_chart

    table = knowledge_filter(study.lm, study.two_hop, progress=True)
    child.write_table("knowledge", table, key=["qid"])
    counts = subset_counts(table)
    child.write_table("subset_counts", counts.reset_index() if counts.index.name else counts)
    acc = accuracy_table(table)
    child.write_table("accuracy", acc.reset_index() if acc.index.name else acc)
    overall = table["subset"].value_counts()
    fig = bar_chart(overall.to_dict(), title="two-hop queries by knowledge subset", ylabel="queries")
    head = {f"queries: {k}": int(v) for k, v in overall.items()}
    child.add_section("Knowledge filter",
                      text=(f"{len(table)} two-hop world-facts queries; each is scored on its first hop, second hop, "
                            "composition and the two shortcut prompts (greedy decoding, alias match)."),
                      figures=[fig], tables={"accuracy by composition": "accuracy", "subsets": "subset_counts",
                                             "per query": "knowledge"}, headline=head)
    return head


def _backpatch(study: Study, child) -> dict[str, Any]:
    from hopscope.methods.backpatch import StudyOptions
    from hopscope.methods.backpatch import run_study as backpatch_run

    n_layers = study.lm.n_layers
    grid = list(range(0, n_layers, 3)) + ([n_layers - 1] if (n_layers - 1) % 3 else [])
    opts = StudyOptions.quick(n_layers, seed=study.settings.seed, layers=grid, resolve_layers=grid,
                              limit=study.settings.backpatch_queries, max_new_tokens=4)
    return backpatch_run(study.lm, study.two_hop, child, opts)


def _inject(study: Study, child) -> dict[str, Any]:
    from hopscope.methods.injection_study import InjectionSettings, injection_study

    settings = InjectionSettings.quick(n_pairs=study.settings.inject_pairs, grid_prompts=4, layer_stride=5,
                                       lens_steps=40, projection_pairs=6, head_pairs=4, seed=study.settings.seed)
    return injection_study(study.lm, study.two_hop, child, settings=settings, log=study.say)


def _recall(study: Study, child) -> dict[str, Any]:
    from hopscope.methods.recall.queries import relation_queries
    from hopscope.methods.recall.study import recall_study

    s = study.settings
    queries = relation_queries(s.relation, s.recall_queries, shots=s.k_shot, seed=s.seed)
    return recall_study(study.lm, queries, child, quick=True, seed=s.seed, progress=True,
                        title=f"{s.k_shot}-shot").headline


def _probe(study: Study, child) -> dict[str, Any]:
    from hopscope.methods.probe.study import run_probe_study, write_probe_study

    result = run_probe_study(None, quick=True, seed=study.settings.seed, progress=study.say)
    write_probe_study(child, result)
    return dict(result.get("summary", {}))


def _finished(path) -> bool:
    """Whether ``path`` holds a finished analysis run (a resumed study skips it)."""
    from hopscope.report import RunFolder

    return (path / "config.json").is_file() and RunFolder.open(path).status == "done"


STEPS: dict[str, Callable[[Study, Any], dict[str, Any]]] = {
    "knowledge": _knowledge, "backpatch": _backpatch, "inject": _inject, "recall": _recall, "probe": _probe,
}


def run_study(settings: StudySettings, *, out: str | None = None, resume: str | None = None,
              say: Callable[[str], None] = print):
    """Run the selected analyses into one study run folder; returns the RunFolder (finished)."""
    import hopscope
    from hopscope.report import RunFolder

    unknown = [a for a in settings.only if a not in STEPS]
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; choose from {list(STEPS)}")
    run = RunFolder.start("study", settings.to_dict(), out=out, resume=resume, seed=settings.seed)
    study = Study(settings, run, say=say)
    t0 = time.monotonic()
    try:
        say(f"loading model {settings.model or 'smollm2-135m (default)'}")
        study.lm = hopscope.load_model(settings.model, device=settings.device, dtype=settings.dtype)
        run.set_model(study.lm)
        if any(a in settings.only for a in ("knowledge", "backpatch", "inject")):
            study.two_hop = _two_hop(study)
            run.set_dataset("world_facts_two_hop", study.two_hop)
        timings = {}
        for name in settings.only:
            if _finished(run.path / name):
                say(f"[{name}] already finished in {run.path / name}; skipping")
                continue
            child = run.child(name)
            say(f"[{name}] running")
            t = time.monotonic()
            try:
                STEPS[name](study, child)
            except BaseException as err:
                child.fail(err)
                raise
            timings[name] = round(time.monotonic() - t, 1)
            child.finish()
            say(f"[{name}] done in {timings[name]} s")
        run.add_section(
            "Study", text=(f"Model {study.lm.name} ({study.lm.source}); analyses: {', '.join(settings.only)}; "
                           f"seed {settings.seed}. Seconds per analysis in this session: {timings}. "
                           f"Total {time.monotonic() - t0:.0f} s. Each analysis's own sections and headline "
                           f"numbers follow."))
        run.finish()
    except BaseException as err:  # keep what finished; the report shows the run as interrupted/failed
        run.fail(err)
        raise
    return run
