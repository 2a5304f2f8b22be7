"""Forward-mode (JVP) attention for rCM's sCM tangent: O = softmax(Q·Kᵀ·scale)·V and its tangent

    tS = (tQ·Kᵀ + Q·tKᵀ)·scale,   tO = P·tV + (P ⊙ tS)·V − rowsum(P ⊙ tS) ⊙ O

(the math of `rcm/utils/flash_attention_jvp_triton.py`). PyTorch's SDPA kernels have no forward-mode AD, so a Wan
transformer needs this attention to go through `torch.func.jvp`.

* `jvp_attention_reference` — the chunked pure-PyTorch spec (O(chunk × S_k) memory, ≥ float32 math).
* `attention_with_jvp` — a `torch.autograd.Function`: primal and backward by SDPA, forward-mode tangent by a JVP
  implementation with the reference's signature (the reference by default; a kernel can be passed in).
* `JVPWanAttnProcessor`, `install_jvp_attention` / `remove_jvp_attention` / `using_jvp_attention` — route every
  Wan attention call (self, text cross, I2V image cross) through it — or every HunyuanVideo one (joint [video; text]
  attention with its text-padding mask, the token refiner's); installing returns the original processors.

Layout [B, S, H, D] (turbo's / diffusers' dispatch layout); q and k/v lengths may differ (cross-attention).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ..adapters.wan import wan_query_key_value
from ..errors import TurboError

__all__ = [
    "DEFAULT_CHUNK", "attention_reference", "jvp_attention_reference", "attention_backward_reference",
    "JVPAttentionFunction", "attention_with_jvp", "JVPWanAttnProcessor", "JVPAttnProcessor", "install_jvp_attention",
    "remove_jvp_attention", "using_jvp_attention",
]

DEFAULT_CHUNK = 1024  # query rows per chunk in the reference

JVPFn = Callable[..., "tuple[torch.Tensor, torch.Tensor]"]


def _math_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _heads_first(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.transpose(1, 2).to(dtype)  # [B, S, H, D] -> [B, H, S, D]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise TurboError(f"JVP attention takes [B, S, H, D] tensors; got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}.")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] \
            or q.shape[3] != k.shape[3]:
        raise TurboError(f"JVP attention shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)} (batch, heads and q/k head dim must agree).")


def _mask_rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return mask if mask is None or mask.shape[-2] == 1 else mask[..., rows, :]


def jvp_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor | None,
                            tk: torch.Tensor | None, tv: torch.Tensor | None, scale: float | None = None,
                            chunk: int = DEFAULT_CHUNK, mask: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, tO) of softmax attention at (q, k, v) along (tq, tk, tv).

    q: [B, Sq, H, D]; k: [B, Sk, H, D]; v: [B, Sk, H, Dv]; a tangent may be None (zero). scale defaults to D^-½.
    mask: None or boolean, broadcastable to [B, H, Sq, Sk], True = attend (SDPA's boolean `attn_mask`; every row
    needs one True). Chunked over query rows (`chunk` rows at a time), math in float32 (float64 stays float64). Both
    outputs are [B, Sq, H, Dv] in q's dtype.
    """
    _check(q, k, v)
    dtype = _math_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, Sq, H, _ = q.shape
    qh, kh, vh = (_heads_first(x, dtype) for x in (q, k, v))
    tqh, tkh, tvh = (_heads_first(x, dtype) for x in (tq, tk, tv))
    kt = kh.transpose(-1, -2)
    tkt = None if tkh is None else tkh.transpose(-1, -2)
    out = torch.empty(B, Sq, H, v.shape[-1], dtype=q.dtype, device=q.device)
    t_out = torch.empty_like(out)
    for start in range(0, Sq, max(1, int(chunk))):
        rows = slice(start, start + chunk)
        qc = qh[:, :, rows]
        scores = (qc @ kt) * scale
        if mask is not None:
            scores = scores.masked_fill(~_mask_rows(mask, rows), float("-inf"))
        p = torch.softmax(scores, dim=-1)  # [B, H, c, Sk]; masked keys get 0
        oc = p @ vh
        toc = torch.zeros_like(oc) if tvh is None else p @ tvh
        ts = None
        if tqh is not None:
            ts = tqh[:, :, rows] @ kt
        if tkt is not None:
            ts = qc @ tkt if ts is None else ts + qc @ tkt
        if ts is not None:
            pts = p * (ts * scale)
            toc = toc + pts @ vh - pts.sum(dim=-1, keepdim=True) * oc
        out[:, rows] = oc.transpose(1, 2).to(q.dtype)
        t_out[:, rows] = toc.transpose(1, 2).to(q.dtype)
    return out, t_out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Chunked materialised softmax attention, [B, S, H, D] in and out (the primal of `jvp_attention_reference`)."""
    return jvp_attention_reference(q, k, v, None, None, None, scale=scale, chunk=chunk)[0]


def attention_backward_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_out: torch.Tensor,
                                 scale: float | None = None, chunk: int = DEFAULT_CHUNK):
    """(dq, dk, dv) of softmax attention for upstream grad_out [B, Sq, H, Dv], chunked over query rows."""
    _check(q, k, v)
    dtype = _math_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh, gh = (_heads_first(x, dtype) for x in (q, k, v, grad_out))
    dq = torch.empty_like(qh)
    dk, dv = torch.zeros_like(kh), torch.zeros_like(vh)
    for start in range(0, q.shape[1], max(1, int(chunk))):
        rows = slice(start, start + chunk)
        qc, gc = qh[:, :, rows], gh[:, :, rows]
        p = torch.softmax((qc @ kh.transpose(-1, -2)) * scale, dim=-1)
        oc = p @ vh
        dv += p.transpose(-1, -2) @ gc
        ds = p * (gc @ vh.transpose(-1, -2) - (gc * oc).sum(dim=-1, keepdim=True))
        dq[:, :, rows] = (ds @ kh) * scale
        dk += (ds.transpose(-1, -2) @ qc) * scale
    return tuple(x.transpose(1, 2).to(ref.dtype) for x, ref in ((dq, q), (dk, k), (dv, v)))


def _sdpa(q, k, v, scale, mask=None):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                          scale=scale).transpose(1, 2)


class JVPAttentionFunction(torch.autograd.Function):
    """Dense attention with forward-mode AD ([B, S, H, D]). Primal: SDPA; backward: SDPA's backward on a
    recomputation; JVP: `jvp_fn(q, k, v, tq, tk, tv, scale=, chunk=) -> (O, tO)` (tangents of inputs that carry
    none arrive as None or zeros). Works under `torch.func.jvp` (setup_context style + `jvp` staticmethod)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, scale, chunk, jvp_fn, mask):
        return _sdpa(q, k, v, scale, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, scale, chunk, jvp_fn, mask = inputs
        ctx.scale, ctx.chunk, ctx.jvp_fn, ctx.mask = scale, chunk, jvp_fn, mask
        ctx.save_for_backward(q, k, v)
        ctx.save_for_forward(q, k, v)

    @staticmethod
    def jvp(ctx, tq, tk, tv, _scale, _chunk, _jvp_fn, _mask):
        q, k, v = ctx.saved_tensors
        if ctx.mask is not None:  # the Triton kernel takes no mask: the reference does
            return jvp_attention_reference(q, k, v, tq, tk, tv, scale=ctx.scale, chunk=ctx.chunk, mask=ctx.mask)[1]
        return ctx.jvp_fn(q, k, v, tq, tk, tv, scale=ctx.scale, chunk=ctx.chunk)[1]

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            needs = ctx.needs_input_grad[:3]
            leaves = [x.detach().requires_grad_(need) for x, need in zip((q, k, v), needs, strict=True)]
            out = _sdpa(*leaves, ctx.scale, ctx.mask)
            wanted = [x for x in leaves if x.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if x.requires_grad else None for x in leaves), None, None, None, None)


def attention_with_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                       chunk: int = DEFAULT_CHUNK, jvp_fn: JVPFn | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense softmax attention [B, Sq, H, D] × [B, Sk, H, D] → [B, Sq, H, Dv] that `torch.func.jvp` and
    `torch.autograd` both go through. `jvp_fn` defaults to `jvp_attention_reference`; `mask` (boolean, broadcastable
    to [B, H, Sq, Sk], True = attend) sends the tangent through the reference."""
    _check(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if mask is not None and mask.dtype != torch.bool:
        raise TurboError(f"JVP attention takes a boolean mask (True = attend), got {mask.dtype}.")
    return JVPAttentionFunction.apply(q, k, v, scale, int(chunk), jvp_fn or jvp_attention_reference, mask)


# ---- Wan processor --------------------------------------------------------------------------------------------------

def _wan_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE on [B, S, H, D], written out-of-place (same values as the stock processor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class JVPWanAttnProcessor:
    """`WanAttnProcessor` with every attention product (self, text cross, I2V image cross) computed by
    `attention_with_jvp`, so `torch.func.jvp` runs through the whole transformer. Projections, QK-norm across heads
    and RoPE are the stock ones. `original` is the processor it replaced (kept for `remove_jvp_attention`)."""

    def __init__(self, original=None, *, chunk: int = DEFAULT_CHUNK, jvp_fn: JVPFn | None = None):
        self.original = original
        self.chunk = chunk
        self.jvp_fn = jvp_fn

    def _attend(self, q, k, v):
        return attention_with_jvp(q, k, v, chunk=self.chunk, jvp_fn=self.jvp_fn)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is not None:
            raise TurboError("JVP attention does not take an attention mask; Wan passes none, so this model is not "
                             "a supported Wan transformer.")
        image_states = None
        if attn.add_k_proj is not None:
            image_len = encoder_hidden_states.shape[1] - 512  # diffusers' WanAttnProcessor: text context is 512
            image_states = encoder_hidden_states[:, :image_len]
            encoder_hidden_states = encoder_hidden_states[:, image_len:]
        query, key, value = wan_query_key_value(attn, hidden_states, encoder_hidden_states, rotary_emb, rope=_wan_rope)
        out = self._attend(query, key, value).flatten(2, 3).type_as(query)
        if image_states is not None:
            if attn.fused_projections:
                key_img, value_img = attn.to_added_kv(image_states).chunk(2, dim=-1)
            else:
                key_img, value_img = attn.add_k_proj(image_states), attn.add_v_proj(image_states)
            key_img = attn.norm_added_k(key_img).unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            out = out + self._attend(query, key_img, value_img).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# ---- HunyuanVideo processors ----------------------------------------------------------------------------------------

def _hunyuan_processor_class():
    from ..adapters.hunyuan import TurboHunyuanVideoAttnProcessor

    class JVPHunyuanVideoAttnProcessor(TurboHunyuanVideoAttnProcessor):
        """HunyuanVideo's joint [video; text] attention (dual- and single-stream blocks) exactly as turbo's processor
        computes it, the attention product by `attention_with_jvp` with the text-padding mask."""

        def __init__(self, original=None, *, chunk: int = DEFAULT_CHUNK, jvp_fn: JVPFn | None = None):
            self.original, self.chunk, self.jvp_fn = original, chunk, jvp_fn

        def _self_attention(self, attn, q, k, v, attention_mask=None, num_video=None):
            mask = None if attention_mask is None else attention_mask.bool()
            return attention_with_jvp(q, k, v, chunk=self.chunk, jvp_fn=self.jvp_fn, mask=mask)

    return JVPHunyuanVideoAttnProcessor


class JVPAttnProcessor:
    """diffusers' plain `AttnProcessor2_0` (q/k/v projections, optional QK norms, mask, output projection) with the
    product by `attention_with_jvp`: HunyuanVideo's token refiner, whose input depends on the timestep too."""

    def __init__(self, original=None, *, chunk: int = DEFAULT_CHUNK, jvp_fn: JVPFn | None = None):
        self.original, self.chunk, self.jvp_fn = original, chunk, jvp_fn

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if getattr(attn, "spatial_norm", None) is not None or getattr(attn, "group_norm", None) is not None \
                or getattr(attn, "residual_connection", False) or hidden_states.ndim != 3:
            raise TurboError("JVP attention supports plain diffusers Attention modules (no spatial / group norm, no "
                             "residual connection, [B, S, C] inputs).")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        mask = None if attention_mask is None else attention_mask.bool()
        out = attention_with_jvp(query, key, value, chunk=self.chunk, jvp_fn=self.jvp_fn, mask=mask)
        out = attn.to_out[0](out.flatten(2, 3).type_as(query))
        return attn.to_out[1](out) / attn.rescale_output_factor


def _family(transformer: torch.nn.Module) -> str:
    from ..adapters.base import class_name
    from ..adapters.hunyuan import HunyuanVideoAdapter
    from ..adapters.wan import WanAdapter

    name = class_name(transformer)
    for adapter in (WanAdapter, HunyuanVideoAdapter):
        if name in adapter.class_names:
            return adapter.family
    supported = (*WanAdapter.class_names, *HunyuanVideoAdapter.class_names)
    raise TurboError(f"JVP attention supports {', '.join(supported)} for now, not {name}.")


def _jvp_processors(family: str, originals: dict, chunk: int, jvp_fn: JVPFn | None) -> dict:
    if family == "wan":
        return {k: JVPWanAttnProcessor(p, chunk=chunk, jvp_fn=jvp_fn) for k, p in originals.items()}
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

    joint = _hunyuan_processor_class()
    return {k: joint(p, chunk=chunk, jvp_fn=jvp_fn) if isinstance(p, HunyuanVideoAttnProcessor2_0)
            else JVPAttnProcessor(p, chunk=chunk, jvp_fn=jvp_fn) for k, p in originals.items()}


def install_jvp_attention(transformer: torch.nn.Module, *, chunk: int = DEFAULT_CHUNK,
                          jvp_fn: JVPFn | None = None) -> dict:
    """Put JVP processors on every attention module of a Wan (`JVPWanAttnProcessor`) or HunyuanVideo (joint blocks
    and token refiner) transformer; returns the original processors ({name: processor}) for `remove_jvp_attention`.
    Refuses other families and turbo's sparse methods."""
    from ..adapters import METHOD_ATTR

    family = _family(transformer)
    for name, module in transformer.named_modules():
        method = getattr(module, METHOD_ATTR, None)
        if method is not None:
            raise TurboError(f"JVP needs dense attention for now: {name} runs turbo's {type(method).__name__}; "
                             "call turbo.restore(pipe) before distilling.")
    originals = dict(transformer.attn_processors)
    transformer.set_attn_processor(_jvp_processors(family, originals, chunk, jvp_fn))
    return originals


def remove_jvp_attention(transformer: torch.nn.Module, originals: dict) -> None:
    """Put back the processors `install_jvp_attention` returned."""
    transformer.set_attn_processor(dict(originals))


@contextlib.contextmanager
def using_jvp_attention(transformer: torch.nn.Module, *, chunk: int = DEFAULT_CHUNK,
                        jvp_fn: JVPFn | None = None) -> Iterator[torch.nn.Module]:
    """`with using_jvp_attention(model): ...` — install, then always remove."""
    originals = install_jvp_attention(transformer, chunk=chunk, jvp_fn=jvp_fn)
    try:
        yield transformer
    finally:
        remove_jvp_attention(transformer, originals)
