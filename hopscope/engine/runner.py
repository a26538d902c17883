"""The batched runner: prompts in, logits and cached activations out, each row with its own interventions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from hopscope.engine.hooks import HookSession, Layout, prepare_knockouts
from hopscope.engine.interventions import Intervention
from hopscope.engine.sites import Site

if TYPE_CHECKING:
    from hopscope.models.loaded import Batch, LoadedModel


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


def _rows(interventions, n: int) -> list[Sequence[Intervention]]:
    if interventions is None:
        return [[] for _ in range(n)]
    if len(interventions) != n:
        raise ValueError(f"got {len(interventions)} intervention lists for {n} prompts: give one list per row")
    return [list(x) for x in interventions]


def forward(
    lm: "LoadedModel",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    interventions: Sequence[Sequence[Intervention]],
    layout: Layout,
    *,
    record: Iterable[tuple[str, int]] = (),
    past_key_values=None,
    use_cache: bool = False,
    last_only: bool = False,
):
    """One hooked forward; returns (HF output, HookSession)."""
    layout.width = input_ids.shape[1]
    session = HookSession(lm, interventions, layout, record)
    with torch.no_grad(), session:
        prepare_knockouts(session, input_ids.shape[0], input_ids.shape[1], layout.past + input_ids.shape[1],
                          input_ids.device)
        out = lm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            logits_to_keep=1 if last_only else 0,
        )
    return out, session


def run(
    lm: "LoadedModel",
    prompts: Sequence[str] | str,
    interventions: Sequence[Sequence[Intervention]] | None = None,
    *,
    last_only: bool = False,
    batch_size: int | None = None,
) -> RunResult:
    """Run ``prompts`` (left-padded) with one list of interventions per row.

    ``last_only`` keeps only the last position's logits (``[rows, vocab]``), which saves memory on big
    batches; ``batch_size`` splits the rows into chunks (results are concatenated; full logits are then
    padded to a common width on the left).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    rows = _rows(interventions, len(prompts))
    if batch_size is not None and len(prompts) > batch_size:
        if not last_only:
            raise ValueError("batch_size chunking needs last_only=True (full logits of chunks differ in width)")
        parts = [run(lm, prompts[i:i + batch_size], rows[i:i + batch_size], last_only=True)
                 for i in range(0, len(prompts), batch_size)]
        return RunResult(torch.cat([p.logits for p in parts]), [c for p in parts for c in p.cache])
    batch = lm.encode(prompts)
    layout = Layout(lengths=batch.lengths, offsets=batch.offsets)
    out, session = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids, rows, layout,
                           last_only=last_only)
    logits = out.logits[:, -1].float() if last_only else out.logits.float()
    return RunResult(logits, session.cache, batch)


def run_with_cache(
    lm: "LoadedModel",
    prompts: Sequence[str] | str,
    components: Iterable[str] = ("resid_post",),
    layers: Iterable[int] | None = None,
    interventions: Sequence[Sequence[Intervention]] | None = None,
) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """Logits ``[b, seq, vocab]`` and a dict ``acts[component, layer]`` of whole-batch activations.

    Layout is left-padded (see ``lm.encode``). Shapes: residual-space components ``[b, seq, d_model]``;
    ``head_out`` ``[b, seq, n_heads, d_model]``; ``attn_pattern`` ``[b, n_heads, seq, seq]``.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    layer_list = list(range(lm.n_layers)) if layers is None else [l + lm.n_layers if l < 0 else l for l in layers]
    record = []
    for comp in components:
        if comp == "embed":
            record.append(("resid_pre", 0))
        elif comp == "final_norm":
            record.append(("final_norm", lm.n_layers - 1))
        else:
            record.extend((comp, l) for l in layer_list)
    batch = lm.encode(prompts)
    layout = Layout(lengths=batch.lengths, offsets=batch.offsets)
    out, session = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids,
                           _rows(interventions, len(prompts)), layout, record=record)
    acts = dict(session.acts)
    if "embed" in components:
        acts["embed", 0] = acts["resid_pre", 0]
    return out.logits.float(), acts
