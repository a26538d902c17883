"""Linearisations that make attribution exact: the final norm with its scale frozen, MLPs with their
activation pattern (and pre-MLP norm scale) frozen.

* :class:`NormSpec` — RMSNorm (Llama, Qwen2, Gemma's ``1 + w``) or LayerNorm written out, so a residual
  vector ``x = sum_i c_i`` normalises as ``sum_i linear(c_i, scale(x)) + bias``.
* :class:`MLPSpec` — one block's MLP (SwiGLU/GeGLU gate-up-down, or GELU in-out) written out; with the
  norm scale and the nonlinearity frozen at ``x`` it is linear in its input, so it splits exactly into
  per-input-component parts plus a constant.
* :func:`logit_diff_directions` — per prompt, the vector ``u`` and constant with
  ``u . x + const = logit(answer) - mean(logits)`` for the final residual ``x`` (final norm frozen at x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


# -- norms ------------------------------------------------------------------------------------------
@dataclass
class NormSpec:
    """A normalisation ``weight * center?(x) / scale(x) + bias`` with its parts exposed."""

    kind: str  # "rms" | "layer"
    weight: torch.Tensor  # effective multiplicative weight [d]
    bias: torch.Tensor | None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor ``[..., 1]`` computed from the full input ``x``."""
        x = x.float()
        if self.kind == "layer":
            return torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + self.eps)
        return torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def linear(self, v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm applied to a component ``v`` with the scale frozen (no bias)."""
        v = v.float()
        if self.kind == "layer":
            v = v - v.mean(-1, keepdim=True)
        return self.weight * v / scale

    def bias_or_zero(self) -> torch.Tensor:
        return self.bias if self.bias is not None else torch.zeros_like(self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x, self.scale(x)) + self.bias_or_zero()


def norm_spec(module: nn.Module) -> NormSpec:
    """Describe an RMSNorm / LayerNorm module; checks the description against the module's own output."""
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.LayerNorm) or name.endswith("LayerNorm") and hasattr(module, "normalized_shape"):
        d = module.normalized_shape[-1]
        w = weight.detach().float().cpu() if weight is not None else torch.ones(d)
        b = module.bias.detach().float().cpu() if getattr(module, "bias", None) is not None else None
        spec = NormSpec("layer", w, b, float(module.eps))
    elif "RMSNorm" in name and weight is not None:
        eps = getattr(module, "variance_epsilon", None)
        eps = getattr(module, "eps", 1e-6) if eps is None else eps
        w = weight.detach().float().cpu()
        if name.startswith("Gemma"):
            w = 1.0 + w
        spec = NormSpec("rms", w, None, float(eps))
    else:
        raise NotImplementedError(f"cannot linearise norm module {name}: only RMSNorm and LayerNorm are supported")
    probe = torch.randn(3, spec.weight.shape[0], generator=torch.Generator().manual_seed(0)) * 3
    dtype = weight.dtype if weight is not None else torch.float32
    with torch.no_grad():
        ref = module(probe.to(device=weight.device if weight is not None else "cpu", dtype=dtype)).float().cpu()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    if not torch.allclose(spec(probe), ref, atol=tol, rtol=tol):
        raise NotImplementedError(f"norm module {name} does not match its RMSNorm/LayerNorm description")
    return spec


# -- final norm + unembedding -----------------------------------------------------------------------
def _check_linear_readout(lm: "LoadedModel") -> None:
    if getattr(lm.config, "final_logit_softcapping", None):
        raise NotImplementedError(f"{lm.name} soft-caps its logits: logit attribution is not linear there")


def logit_diff_directions(
    lm: "LoadedModel", resid_final: torch.Tensor, token_ids: torch.Tensor | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u [n, d], const [n])`` with ``u_i . x_i + const_i = logit_i(token_i) - mean(logit_i)``.

    ``resid_final`` ``[n, d]`` is the final residual at the read-out position; the final norm's scale is
    frozen at it, so ``u_i . c`` is the direct logit attribution of any residual component ``c``.
    """
    _check_linear_readout(lm)
    ad = lm.adapter
    spec = norm_spec(ad.final_norm)
    w_u = ad.unembed_weight().detach().float().cpu()
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=w_u.device)
    dvec = w_u[ids] - w_u.mean(0)
    scale = spec.scale(resid_final)
    u = spec.weight * dvec / scale
    if spec.kind == "layer":
        u = u - u.mean(-1, keepdim=True)
    const = dvec @ spec.bias_or_zero()
    b_u = ad.unembed_bias()
    if b_u is not None:
        b_u = b_u.detach().float().cpu()
        const = const + b_u[ids] - b_u.mean()
    return u, const


def direction_logits(lm: "LoadedModel", vectors: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits ``[..., V]`` of residual components read through the final norm's weight (and
    centring) without its scale: the ranking a component's direct effect gives each token."""
    spec = norm_spec(lm.adapter.final_norm)
    v = spec.linear(vectors, torch.ones(1, device=vectors.device))
    return v @ lm.adapter.unembed_weight().detach().float().cpu().T


# -- MLPs -----------------------------------------------------------------------------------------
def _linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W [out, in], b) of an nn.Linear or a GPT-2 Conv1D."""
    w = module.weight.detach().float().cpu()
    if type(module).__name__ == "Conv1D":
        w = w.T
    b = getattr(module, "bias", None)
    return w, (b.detach().float().cpu() if b is not None else None)


@dataclass
class MLPSpec:
    """One MLP written out: ``W_out (act(gate) * up) + b_out`` (gated) or ``W_out act(W_in n(x) + b_in) + b_out``."""

    norm: NormSpec
    w_in: torch.Tensor  # [m, d] (the "up" projection when gated)
    b_in: torch.Tensor | None
    w_out: torch.Tensor  # [d, m]
    b_out: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]
    down: nn.Module  # the module that receives the hidden activations (for neuron hooks)
    w_gate: torch.Tensor | None = None
    b_gate: torch.Tensor | None = None

    @property
    def gated(self) -> bool:
        return self.w_gate is not None

    @property
    def d_mlp(self) -> int:
        return self.w_in.shape[0]

    @staticmethod
    def _aff(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        y = x @ w.T
        return y + b if b is not None else y

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Neuron activations ``[..., m]`` (the input of the down projection) for MLP input ``x``."""
        n = self.norm(x)
        if self.gated:
            return self.act(self._aff(n, self.w_gate, self.b_gate)) * self._aff(n, self.w_in, self.b_in)
        return self.act(self._aff(n, self.w_in, self.b_in))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._aff(self.hidden(x), self.w_out, self.b_out)

    def frozen_gain(self, x: torch.Tensor) -> torch.Tensor:
        """Per-neuron multiplier ``[..., m]`` on the (frozen-norm) input projection, frozen at input ``x``:
        ``act(gate)`` for gated MLPs, ``act(z) / z`` for plain ones."""
        n = self.norm(x)
        if self.gated:
            return self.act(self._aff(n, self.w_gate, self.b_gate))
        z = self._aff(n, self.w_in, self.b_in)
        tiny = z.abs() < 1e-6
        safe = torch.where(tiny, torch.full_like(z, 1e-3), z)
        slope0 = self.act(torch.tensor(1e-3)) / 1e-3  # the activation's slope at 0
        return torch.where(tiny, slope0.expand_as(z), self.act(safe) / safe)

    def linear_parts(self, x: torch.Tensor, components: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``mlp(x)`` exactly over ``components`` ``[..., k, d]`` (which must sum to ``x`` ``[..., d]``).

        Returns ``(parts [..., k, d], constant [..., d])`` with ``parts.sum(-2) + constant == mlp(x)``:
        the norm scale and the activation pattern are frozen at ``x``, so the MLP is linear in its input.
        """
        scale = self.norm.scale(x)[..., None, :]  # [..., 1, 1]
        gain = self.frozen_gain(x)  # [..., m]
        lin = self.norm.linear(components, scale) @ self.w_in.T  # [..., k, m]
        parts = (gain[..., None, :] * lin) @ self.w_out.T
        inner = self.norm.bias_or_zero() @ self.w_in.T
        if self.b_in is not None:
            inner = inner + self.b_in
        const = (gain * inner) @ self.w_out.T
        if self.b_out is not None:
            const = const + self.b_out
        return parts, const


def mlp_spec(lm: "LoadedModel", layer: int) -> MLPSpec:
    """The MLP of ``layer`` (and its pre-MLP norm) written out for the model's family."""
    block = lm.adapter.blocks[layer]
    mlp = lm.adapter.mlp[layer]
    if hasattr(block, "post_feedforward_layernorm"):
        raise NotImplementedError(f"{lm.family}: sandwich-normed MLP outputs are not linear in the residual")
    if hasattr(mlp, "gate_proj") and hasattr(mlp, "up_proj"):
        norm_mod = getattr(block, "pre_feedforward_layernorm", None) or block.post_attention_layernorm
        w_g, b_g = _linear(mlp.gate_proj)
        w_in, b_in = _linear(mlp.up_proj)
        w_out, b_out = _linear(mlp.down_proj)
        return MLPSpec(norm_spec(norm_mod), w_in, b_in, w_out, b_out, mlp.act_fn, mlp.down_proj, w_g, b_g)
    if lm.family == "gpt2":
        parts = (block.ln_2, mlp.c_fc, mlp.c_proj, mlp.act)
    elif lm.family == "gpt_neox":
        parts = (block.post_attention_layernorm, mlp.dense_h_to_4h, mlp.dense_4h_to_h, mlp.act)
    elif lm.family == "opt":
        if not block.do_layer_norm_before:
            raise NotImplementedError("OPT with post-MLP layer norm is not supported")
        parts = (block.final_layer_norm, block.fc1, block.fc2, block.activation_fn)
    else:
        raise NotImplementedError(f"no MLP linearisation for family {lm.family!r}")
    norm_mod, fc_in, fc_out, act = parts
    w_in, b_in = _linear(fc_in)
    w_out, b_out = _linear(fc_out)
    return MLPSpec(norm_spec(norm_mod), w_in, b_in, w_out, b_out, act, fc_out)


def mlp_input_component(lm: "LoadedModel") -> str:
    """The residual component an MLP reads: ``resid_mid`` (sequential blocks) or ``resid_pre`` (parallel)."""
    return "resid_pre" if lm.adapter.parallel_residual else "resid_mid"
