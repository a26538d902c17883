"""The batched runner: prompts in, logits and cached activations out, each row with its own interventions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from hopscope.engine import kv
from hopscope.engine.compat import call_model, output_cache
from hopscope.engine.kv import sliding_window
from hopscope.engine.hooks import ColumnStaircase, HookSession, Staircase
from hopscope.engine.interventions import Intervention
from hopscope.engine.layout import Layout, tails_after_prefixes
from hopscope.engine.prefix import STORE, common_prefix
from hopscope.engine.sites import Site, first_position, normalise_site, parse_hook_name

if TYPE_CHECKING:
    from hopscope.models.loaded import Batch, LoadedModel

MIN_SHARED_PREFIX = 4  # tokens: shorter common prefixes are not worth a cache


@dataclass
class RunResult:
    """Logits (``[rows, seq, vocab]``, or ``[rows, vocab]`` for last-position runs) and per-row caches."""

    logits: torch.Tensor
    cache: list[dict[Site, torch.Tensor]]
    batch: "Batch | None" = None
    past_key_values: object = field(default=None, repr=False)

    def cached(self, site: Site) -> torch.Tensor:
        """The value of ``site`` cached in every row, stacked along a new first dimension."""
        return torch.stack([c[site] for c in self.cache])


class Activations(dict):
    """``run_with_cache`` activations, indexed by ``(component, layer)`` or a TransformerLens hook name."""

    def __init__(self, data: dict, n_layers: int) -> None:
        super().__init__(data)
        self.n_layers = n_layers

    def _key(self, key: Any) -> Any:
        if isinstance(key, str):
            comp, layer = parse_hook_name(key, self.n_layers)
            if comp == "embed" and ("embed", 0) not in self.keys():
                return ("resid_pre", 0)
            return comp, layer + self.n_layers if layer < 0 else layer
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], int) and key[1] < 0:
            return key[0], key[1] + self.n_layers
        return key

    def __getitem__(self, key: Any) -> torch.Tensor:
        k = self._key(key)
        if not dict.__contains__(self, k):
            have = sorted({c for c, _ in self.keys()})
            raise KeyError(f"{key!r} was not recorded; recorded components: {', '.join(have)}")
        return dict.__getitem__(self, k)

    def __contains__(self, key: Any) -> bool:
        try:
            return dict.__contains__(self, self._key(key))
        except ValueError:
            return False


def rows_of(interventions, n: int) -> list[list[Intervention]]:
    """One list of interventions per row (``None`` = no interventions)."""
    if interventions is None:
        return [[] for _ in range(n)]
    if len(interventions) != n:
        raise ValueError(f"got {len(interventions)} intervention lists for {n} prompts: give one list per row")
    return [list(x) for x in interventions]


def forward(lm: "LoadedModel", input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            position_ids: torch.Tensor, interventions: Sequence[Sequence[Intervention]], layout: Layout, *,
            record: Iterable[tuple[str, int]] = (), past=None, use_cache: bool = False, last_only: bool | int = False,
            index: list[int] | None = None, staircase: Staircase | ColumnStaircase | None = None):
    """One hooked forward; returns (logits, KV cache or None, HookSession). ``last_only``: logits of the last
    column only (an int ``k``: of the last ``k`` columns)."""
    layout.width = input_ids.shape[1]
    session = HookSession(lm, interventions, layout, record, index=index, staircase=staircase)
    rows = 1 + max(session.index) if session.index else input_ids.shape[0]
    with session:
        session.prepare(max(rows, input_ids.shape[0]), input_ids.shape[1], layout.prefix + input_ids.shape[1],
                        input_ids.device)
        out = call_model(lm.model, past=past, input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, use_cache=use_cache, logits_to_keep=int(last_only))
    logits = out.logits if out.logits.device == input_ids.device else out.logits.to(input_ids.device)  # split models
    return logits, (output_cache(out) if use_cache else None), session


def run(
    lm: "LoadedModel",
    prompts: Sequence[str] | str,
    interventions: Sequence[Sequence[Intervention]] | None = None,
    *,
    last_only: bool = False,
    batch_size: int | None = None,
    share_prefix: bool = True,
) -> RunResult:
    """Run ``prompts`` (left-padded) with one list of interventions per row.

    ``last_only`` keeps only the last position's logits (``[rows, vocab]``); then prompts that share a
    token prefix run it once from a cached prefix (``share_prefix``). ``batch_size`` splits the rows into
    chunks (needs ``last_only``).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    rows = rows_of(interventions, len(prompts))
    if batch_size is not None and len(prompts) > batch_size:
        if not last_only:
            raise ValueError("batch_size chunking needs last_only=True (full logits of chunks differ in width)")
        parts = [run(lm, prompts[i:i + batch_size], rows[i:i + batch_size], last_only=True, share_prefix=share_prefix)
                 for i in range(0, len(prompts), batch_size)]
        return RunResult(torch.cat([p.logits for p in parts]), [c for p in parts for c in p.cache])
    if last_only and share_prefix:
        ids = [lm.to_ids(p) for p in prompts]
        _check_nonempty(prompts, ids)
        p = shared_prefix_length(lm, ids, rows)
        if p >= MIN_SHARED_PREFIX:
            logits, _, session = suffix_pass(lm, ids, rows, p)
            return RunResult(logits, session.cache)
    batch = lm.encode(prompts)
    layout = Layout.left_padded(batch.lengths, batch.input_ids.shape[1])
    logits, _, session = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids, rows, layout,
                                 last_only=last_only)
    logits = logits[:, -1].float() if last_only else logits.float()
    return RunResult(logits, session.cache, batch)


def run_with_cache(
    lm: "LoadedModel",
    prompts: Sequence[str] | str,
    components: Iterable[str] = ("resid_post",),
    layers: Iterable[int] | None = None,
    interventions: Sequence[Sequence[Intervention]] | None = None,
) -> tuple[torch.Tensor, Activations]:
    """Logits ``[b, seq, vocab]`` and ``acts[component, layer]`` (or ``acts["blocks.3.hook_resid_post"]``).

    ``components`` may be hopscope names or TransformerLens hook names (then ``layers`` is ignored for
    them). Layout is left-padded (see ``lm.encode``). Shapes: residual-space components ``[b, seq, d_model]``;
    ``head_out`` ``[b, seq, n_heads, d_model]``; ``mlp_hidden`` ``[b, seq, d_mlp]``; ``attn_pattern``
    ``[b, n_heads, seq, seq]``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    layer_list = list(range(lm.n_layers)) if layers is None else [l + lm.n_layers if l < 0 else l for l in layers]
    record: list[tuple[str, int]] = []
    wanted_embed = False
    for comp in components:
        if "." in comp or comp.startswith("hook_"):
            c, l = parse_hook_name(comp, lm.n_layers)
            site = normalise_site(Site(l, c, None), lm)
            wanted_embed |= c == "embed"
            record.append(site.key())
        elif comp == "embed":
            wanted_embed = True
            record.append(("resid_pre", 0))
        elif comp == "final_norm":
            record.append(("final_norm", lm.n_layers - 1))
        else:
            record.extend((comp, l) for l in layer_list)
    batch = lm.encode(prompts)
    layout = Layout.left_padded(batch.lengths, batch.input_ids.shape[1])
    logits, _, session = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids,
                                 rows_of(interventions, len(prompts)), layout, record=record)
    acts = dict(session.acts)
    if wanted_embed:
        acts["embed", 0] = acts["resid_pre", 0]
    return logits.float(), Activations(acts, lm.n_layers)


# ---- shared prefixes across different prompts ---------------------------------------------------------------
def shared_prefix_length(lm: "LoadedModel", ids: Sequence[Sequence[int]], rows: Sequence[Sequence[Intervention]],
                         extra: int = 0) -> int:
    """Tokens every prompt shares that no intervention needs recomputed (each row keeps >= 1 own token).

    Rows of different lengths are padded between the shared prefix and their own tokens; in a sliding-window
    model those pads would count against the window, so there prompts share a prefix only when they all
    fit the window (``extra``: tokens still to be generated).
    """
    window = sliding_window(lm)
    if window is not None and len({len(x) for x in ids}) > 1 and max(len(x) for x in ids) + extra >= window:
        return 0
    p = min(len(x) for x in ids) - 1
    for x in ids[1:]:
        p = min(p, common_prefix(ids[0], x))
    for row, ivs in zip(ids, rows):
        for iv in ivs:
            p = min(p, first_position(iv.site.position, len(row)))
    return max(p, 0)


def suffix_pass(lm: "LoadedModel", ids: Sequence[Sequence[int]], rows: Sequence[Sequence[Intervention]], p: int,
                *, keep_cache: bool = False, mask_out: list | None = None):
    """Run prompts that share their first ``p`` tokens from the cached prefix; suffixes are left-padded.

    Returns ``(last logits [rows, vocab], cache or None, session)``; ``mask_out`` receives the attention
    mask (for decoding on).
    """
    r = len(ids)
    suffixes = [list(x[p:]) for x in ids]
    width = max(len(s) for s in suffixes)
    pad_id = lm.tokenizer.pad_token_id
    dev = lm.device
    input_ids = torch.full((r, width), pad_id, dtype=torch.long)
    mask = torch.zeros((r, p + width), dtype=torch.long)
    mask[:, :p] = 1
    positions = torch.zeros((r, width), dtype=torch.long)
    pads = []
    for i, s in enumerate(suffixes):
        pad = width - len(s)
        pads.append(pad)
        input_ids[i, pad:] = torch.tensor(s, dtype=torch.long)
        mask[i, p + pad:] = 1
        positions[i, pad:] = torch.arange(p, p + len(s))
    past = kv.fork(STORE.get(lm, ids[0][:p]), [r]) if p > 0 else None
    layout = Layout([len(x) for x in ids], pads, p, width)
    logits, cache, session = forward(lm, input_ids.to(dev), mask.to(dev), positions.to(dev), rows, layout,
                                     past=past, use_cache=keep_cache or past is not None, last_only=True)
    if mask_out is not None:
        mask_out.append(mask.to(dev))
    return logits[:, -1].float(), cache if keep_cache else None, session


def _check_nonempty(prompts: Sequence[str], ids: Sequence[Sequence[int]]) -> None:
    for p, row in zip(prompts, ids):
        if not row:
            raise ValueError(f"prompt {p!r} tokenizes to nothing")


def multi_prefix_pass(lm: "LoadedModel", parts: Sequence[tuple[Sequence[Sequence[int]], int]], room: int = 0,
                      into: tuple[kv.BatchBuffers, int] | None = None):
    """Prompts without interventions from several cached prefixes, in one forward.

    ``parts``: ``(prompts' token ids, p)`` where those prompts share their first ``p`` tokens. Each part's
    prefix comes from the prefix store; the rows of all parts then run their own tokens together: prefixes
    left-padded to the longest one inside the cache, suffixes left-padded after it (the mask hides both
    paddings; positions are each row's own). Returns ``(last logits [rows, vocab], cache, mask,
    next positions)`` with rows in the order of ``parts``, ready to decode on; ``room``: columns reserved in
    the cache for the tokens decoded next (one buffer holds the prefixes, the rows' tokens and that room, so
    neither this pass nor the decode steps copy the cache). ``into=(batch, row)``: that buffer is rows
    ``row..`` of a decode batch's buffers (:class:`kv.BatchBuffers`), so passes of one batch need no merging.
    """
    ids = [x for group, _ in parts for x in group]
    own = [p for group, p in parts for _ in group]
    input_ids, mask, positions = tails_after_prefixes(ids, own, lm.tokenizer.pad_token_id)
    caches = [STORE.get(lm, group[0][:p]) for group, p in parts]
    past = kv.concat(caches, [p for _, p in parts], max(own), rows=[len(group) for group, _ in parts],
                     room=input_ids.shape[1] + room, into=into)
    dev = lm.device
    mask = mask.to(dev)
    out = call_model(lm.model, past=past, input_ids=input_ids.to(dev), attention_mask=mask,
                     position_ids=positions.to(dev), use_cache=True, logits_to_keep=1)
    logits = out.logits if out.logits.device == dev else out.logits.to(dev)
    next_pos = torch.tensor([len(x) for x in ids], dtype=torch.long, device=dev)
    return logits[:, -1].float(), output_cache(out), mask, next_pos
