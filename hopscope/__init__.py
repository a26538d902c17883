"""hopscope: locate, explain and repair multi-hop reasoning and factual-recall failures in transformer LMs.

What a notebook needs is here at the top level::

    import hopscope
    lm = hopscope.load_model()                     # or hopscope.wrap(model, tokenizer) for a model already loaded
    logits, acts = hopscope.run_with_cache(lm, "The capital of France is")
    acts["blocks.20.hook_resid_post"]              # the same tensor as acts["resid_post", 20]
    result = hopscope.recall(lm, settings="quick") # one function per analysis, each returning a Result
    result.tables["heads"], result.claims          # pandas DataFrames
    result.save("runs/recall")                     # tables, figures, claims and report.html

Models: :func:`load_model`, :func:`wrap`. Engine: :class:`Site`, :func:`run`, :func:`run_with_cache`,
:func:`prompt_pass`, :func:`generate` and the interventions :func:`cache`, :func:`replace`, :func:`add`,
:func:`scale`, :func:`zero_ablate`, :func:`mean_ablate`, :func:`knockout`, :func:`transform`;
:func:`weights_changed` after editing weights. Lenses: :func:`logit_lens`. Analyses: :func:`backpatch`,
:func:`inject`, :func:`recall`, :func:`probe`, :func:`repair`, each returning a :class:`Result`.

Everything is imported on first use, so ``import hopscope`` itself costs milliseconds (torch and transformers
load when a model does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Mapping

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the lazy names below resolve to, for editors and type checkers
    from hopscope.engine import (
        Site, add, cache, generate, knockout, mean_ablate, prompt_pass, replace, run, run_with_cache, scale,
        transform, weights_changed, zero_ablate,
    )
    from hopscope.lenses import logit_lens
    from hopscope.models import LoadedModel, load_model, wrap
    from hopscope.results import Result

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    **dict.fromkeys(("load_model", "wrap", "LoadedModel"), "hopscope.models"),
    **dict.fromkeys(("Site", "run", "run_with_cache", "prompt_pass", "generate", "cache", "replace", "add", "scale",
                     "zero_ablate", "mean_ablate", "knockout", "transform", "weights_changed"), "hopscope.engine"),
    "logit_lens": "hopscope.lenses",
    "Result": "hopscope.results",
}
_SUBPACKAGES = ("cli", "data", "engine", "lenses", "methods", "models", "pipeline", "progress", "report", "results",
                "stats", "study", "sweep", "train")

# top-level function -> the analysis package under hopscope.methods it runs
ANALYSES: dict[str, str] = {
    "backpatch": "hopping", "inject": "injection", "recall": "recall", "probe": "probe", "repair": "repair",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"hopscope.{name}")
    raise AttributeError(f"module 'hopscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_SUBPACKAGES))


# ---- one function per analysis ----------------------------------------------------------------------------------
def backpatch(lm: "LoadedModel", data: Any = None, settings: Any = None, *, run_folder: Any = None,
              progress: bool = True, **options: Any) -> "Result":
    """Back-patching and where the two hops resolve (Biran et al. 2024, "Hopping Too Late").

    Runs :func:`hopscope.methods.hopping.run`: the knowledge filter, back-patching with its controls,
    Patchscopes, attention knockout and sublayer projections. ``data``: two-hop records, a Dataset or a file,
    or None (world facts are built from the settings). ``settings``: a
    :class:`hopscope.methods.hopping.Settings`, ``"quick"`` (a smoke size), ``"study"`` (the size ``hopscope
    study`` uses) or None (the paper's full-size protocol); ``**options`` set its fields (a nested one takes a
    dict: ``knowledge={"queries_per_composition": 20}``). ``run_folder``: also write a run folder there (and
    resume it if it holds one).

    Example: ``hopscope.backpatch(lm, settings="quick", n_incorrect=8).claims``
    """
    return _analysis("backpatch", lm, data, settings, options, run_folder=run_folder, progress=progress)


def inject(lm: "LoadedModel", data: Any = None, settings: Any = None, *, run_folder: Any = None,
           progress: bool = True, **options: Any) -> "Result":
    """Memory injection, per-head projections and attention lenses (Sakarvadia et al. 2023).

    Runs :func:`hopscope.methods.injection.run`. ``data``: injection pairs or a file (None: the built-in
    handwritten set); ``settings``/``**options``: a :class:`hopscope.methods.injection.Settings`, ``"quick"``,
    ``"study"`` or None, and its fields (see :func:`backpatch`).

    Example: ``hopscope.inject(lm, settings="quick", taus=(2.0, 4.0)).tables["grid_summary"]``
    """
    return _analysis("inject", lm, data, settings, options, run_folder=run_folder, progress=progress)


def recall(lm: "LoadedModel", data: Any = None, settings: Any = None, *, run_folder: Any = None,
           progress: bool = True, **options: Any) -> "Result":
    """Factual-recall mechanisms (Lv et al. 2024): subject-moving heads, the MLP that amplifies or erases their
    output, final-layer suppression and its mitigation.

    Runs :func:`hopscope.methods.recall.run`. ``data``: single-hop records (None: world facts of
    ``settings.relation``); ``settings``/``**options``: a :class:`hopscope.methods.recall.Settings`,
    ``"quick"``, ``"study"`` or None, and its fields (see :func:`backpatch`).

    Example: ``hopscope.recall(lm, settings="quick", relation="capital").tables["heads"]``
    """
    return _analysis("recall", lm, data, settings, options, run_folder=run_folder, progress=progress)


def probe(lm: "LoadedModel | None" = None, data: Any = None, settings: Any = None, *, run_folder: Any = None,
          progress: bool = True, **options: Any) -> "Result":
    """MechanisticProbe (Hou et al. 2023): probe attention for the reasoning tree a model follows.

    Runs :func:`hopscope.methods.probe.run`. ``lm``: the model probed (None with the k-th smallest task and
    ``train=True``: a small GPT-2 is trained in the run); ``data``: ProofWriter records or a jsonl path
    (``task="proofwriter"``); ``settings``/``**options``: a :class:`hopscope.methods.probe.Settings`,
    ``"quick"``, ``"study"`` or None, and its fields (see :func:`backpatch`).

    Example: ``hopscope.probe(settings="quick").tables["probe_scores"]``
    """
    return _analysis("probe", lm, data, settings, options, run_folder=run_folder, progress=progress)


def repair(lm: "LoadedModel", data: Any = None, settings: Any = None, *, run_folder: Any = None,
           progress: bool = True, **options: Any) -> "Result":
    """Repair that generalises: each repair policy (a fixed back-patch, an injected first-hop memory, the recall
    mitigation, no repair) chosen on training queries and scored on held-out ones.

    Runs :func:`hopscope.methods.repair.run`. ``data``: two-hop records, a Dataset or a file, or None (world
    facts); ``settings``/``**options``: a :class:`hopscope.methods.repair.Settings`, ``"quick"``, ``"study"``
    or None, and its fields (see :func:`backpatch`).

    Example: ``hopscope.repair(lm, settings="quick").tables["summary"]``
    """
    return _analysis("repair", lm, data, settings, options, run_folder=run_folder, progress=progress)


def _analysis(fn: str, lm: Any, data: Any, settings: Any, options: Mapping[str, Any], *, run_folder: Any,
              progress: bool) -> "Result":
    module = _method(fn)
    if not (lm is None and fn == "probe"):
        _check_model(fn, lm)
    resolved = _settings(module.Settings, settings, options, where=f"hopscope.{fn}()")
    return module.run(lm, data, resolved, run_folder=run_folder, progress=progress)


def _method(fn: str) -> Any:
    name = f"hopscope.methods.{ANALYSES[fn]}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            raise NotImplementedError(f"hopscope.{fn}(): the {ANALYSES[fn]} analysis ({name}) is not in this "
                                      "build of hopscope") from None
        raise


def _check_model(fn: str, lm: Any) -> None:
    from hopscope.models import LoadedModel

    if not isinstance(lm, LoadedModel):
        hint = " (wrap an HF model with hopscope.wrap(model, tokenizer))" if hasattr(lm, "config") else ""
        raise TypeError(f"hopscope.{fn}() takes a model from hopscope.load_model(...) or hopscope.wrap(...), not "
                        f"{type(lm).__name__}{hint}")


def _settings(kind: type, settings: Any = None, options: Mapping[str, Any] | None = None, *,
                     where: str = "settings") -> Any:
    """An instance of the dataclass ``kind`` from ``settings`` (an instance, ``"quick"``, ``"study"``, a dict of
    fields, or None for the defaults) with ``options`` setting fields on top; unknown fields are one error
    listing the valid ones. A field holding a dataclass takes a dict of its own fields."""
    options = dict(options or {})
    if settings is None:
        base = kind()
    elif isinstance(settings, str):
        if settings not in ("quick", "study") or not hasattr(kind, settings):
            sizes = [s for s in ("quick", "study") if hasattr(kind, s)]
            raise ValueError(f"{where}: settings={settings!r} is not a size; give {' or '.join(map(repr, sizes))}, a "
                             f"{kind.__module__}.{kind.__qualname__}, a dict of its fields, or None (the defaults)")
        base = getattr(kind, settings)()
    elif isinstance(settings, Mapping):
        base, options = kind(), {**settings, **options}
    elif isinstance(settings, kind):
        base = settings
    else:
        raise TypeError(f"{where}: settings must be a {kind.__module__}.{kind.__qualname__}, 'quick', 'study', a dict "
                        f"or None, not {type(settings).__name__}")
    resolved = _with_fields(base, options, where) if options else base
    if hasattr(resolved, "validate"):
        resolved.validate()
    return resolved


def _with_fields(base: Any, options: Mapping[str, Any], where: str) -> Any:
    import dataclasses

    names = [f.name for f in dataclasses.fields(base) if f.init]
    unknown = [k for k in options if k not in names]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"{where} has no option {', '.join(map(repr, unknown))}{hint}; the options of "
                         f"{type(base).__qualname__} are: {', '.join(names)}")
    changes = {}
    for key, value in options.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = _with_fields(current, value, f"{where} option {key!r}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(base, **changes)


__all__ = [
    "ANALYSES", "LoadedModel", "Result", "Site", "__version__", "add", "backpatch", "cache", "generate", "inject",
    "knockout", "load_model", "logit_lens", "mean_ablate", "probe", "prompt_pass", "recall", "repair", "replace",
    "run", "run_with_cache", "scale", "transform", "weights_changed", "wrap", "zero_ablate",
]
