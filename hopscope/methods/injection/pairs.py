"""Prompt pairs for memory injection and how their prompts are fed to the model.

A pair is a multi-hop prompt that *describes* the bridge entity (``obscure``), the single-hop prompt that
*names* it (``explicit``), the bridge itself (the gold memory) and the answer. Pairs come from two-hop records
(the study's world-facts queries, or the seed's CSVs through :mod:`hopscope.data.loaders.memory_injection`,
whose unstripped cells are kept so that prompts reach the model exactly as the seed feeds them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from hopscope.data.spans import model_token_span

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

HANDWRITTEN = ("handwritten", "seed")


@dataclass(frozen=True)
class InjectionPair:
    """One explicit/obscure pair: prompts, the bridge entity (gold memory) and the answer."""

    qid: str
    obscure: str
    explicit: str
    bridge: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def as_pairs(items: Iterable[Any]) -> list[InjectionPair]:
    """Pairs from two-hop records (``prompt`` / ``second_hop_prompt`` / ``e2`` / ``e3``), dicts with the
    pair's fields, or pairs themselves."""
    pairs = []
    for i, it in enumerate(items):
        if isinstance(it, InjectionPair):
            pairs.append(it)
        elif isinstance(it, dict) and {"obscure", "explicit", "bridge", "answer"} <= set(it):
            pairs.append(InjectionPair(str(it.get("qid", i)), it["obscure"], it["explicit"], it["bridge"], it["answer"]))
        else:
            try:
                raw = dict(getattr(it, "meta", {}) or {}).get("raw", {})
                pairs.append(InjectionPair(
                    qid=str(it.qid), obscure=raw.get("obscure_sentence", it.prompt),
                    explicit=raw.get("explicit_sentence", it.second_hop_prompt),
                    bridge=raw.get("explicit_entity", it.e2), answer=it.e3))
            except AttributeError as err:
                raise ValueError(f"item {i} ({type(it).__name__}) is neither an injection pair nor a two-hop "
                                 f"record: {err}") from None
    if not pairs:
        raise ValueError("no prompt pairs given")
    qids = [p.qid for p in pairs]
    if len(set(qids)) != len(qids):
        dup = sorted({q for q in qids if qids.count(q) > 1})[:3]
        raise ValueError(f"pair ids must be unique; repeated: {dup}")
    return pairs


def world_facts_pairs(per_composition: int = 6, k_shot: int = 3, seed: int = 0) -> list[InjectionPair]:
    """The study's data: two-hop world-facts queries of every default composition (bridge e2 = gold memory)."""
    from hopscope.data.builders import DEFAULT_TWO_HOP, build_two_hop

    records = []
    for comp in DEFAULT_TWO_HOP:
        records += build_two_hop(comp, n=per_composition, seed=seed, k_shot=k_shot)
    return as_pairs(records)


def load_pairs(path: str | Path) -> list[InjectionPair]:
    """Pairs from a seed memory-injection CSV (``"handwritten"``: the seed's 106 handwritten pairs in the
    shared data folder), or from a two-hop dataset file (JSONL / CSV / Parquet)."""
    from hopscope.data.loaders.memory_injection import HANDWRITTEN as HANDWRITTEN_FILE
    from hopscope.data.loaders.memory_injection import load_memory_injection_csv

    if str(path) in HANDWRITTEN:
        from hopscope.data.loaders._common import shared_data_dir

        try:
            path = shared_data_dir() / "memory_injections" / HANDWRITTEN_FILE
        except FileNotFoundError:
            raise FileNotFoundError(
                "the seed's handwritten pairs are not in this checkout: download "
                "https://github.com/msakarvadia/memory_injections/raw/main/data/handwritten_obscure_explicit_data.csv "
                "and pass its path") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix.lower() == ".csv" and {"explicit_sentence", "obscure_sentence"} <= set(
            pd.read_csv(path, nrows=0).columns):
        return as_pairs(load_memory_injection_csv(path))
    from hopscope.data.dataset import Dataset

    return as_pairs(Dataset.load(path).two_hop())


# ---------------------------------------------------------------------------------------------------------
# prompts as the model sees them
def bos_text(lm: "LoadedModel", prompt_bos: bool) -> str:
    """The text to put before every prompt: the tokenizer's BOS token when ``prompt_bos`` and the tokenizer
    does not add one itself (the seed: TransformerLens's ``prepend_bos``), else nothing."""
    tok = lm.tokenizer
    if not prompt_bos or tok.bos_token is None or tok.bos_token_id is None:
        return ""
    probe = lm.to_ids("a")
    return "" if probe and probe[0] == tok.bos_token_id else tok.bos_token


def fed_prompt(lm: "LoadedModel", text: str, prompt_bos: bool) -> str:
    """``text`` as fed to the model (with the BOS of :func:`bos_text`); ValueError if it tokenizes to nothing."""
    if not text.strip():
        raise ValueError("a prompt is empty")
    out = bos_text(lm, prompt_bos) + text
    if not lm.to_ids(out):
        raise ValueError(f"prompt {text!r} tokenizes to nothing")
    return out


def query_start(lm: "LoadedModel", prompt: str) -> int:
    """First token of the question in ``prompt``: the token after a few-shot prefix (everything up to the
    prompt's last newline), 0 when there is none."""
    cut = prompt.rfind("\n") + 1
    if cut <= 0 or cut >= len(prompt):
        return 0
    return model_token_span(lm, prompt, (cut, len(prompt)), occurrence=-1)[0]
