"""Custom operators: ops that deploy differently on different targets.

Each op is a ``torch.library`` custom op with a pure-PyTorch reference implementation. Exported to ONNX it
stays ONE custom-domain node (domain ``seg``), and ``export/`` decides per target how to lower it. Model code
calls these ops and never asks whether it is being exported.
"""
from __future__ import annotations

import torch


def criss_cross_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention (Huang et al., "CCNet: Criss-Cross Attention for Semantic Segmentation", ICCV 2019).

    Each position (h, w) attends to the H + W - 1 positions in its row and column: one softmax over the
    column energies (self excluded, it is counted once in the row) concatenated with the row energies.
    query, key: (B, C', H, W); value: (B, C, H, W). Returns the aggregated value, (B, C, H, W), without the
    learned scale and residual the module adds.
    """
    b, _, h, w = query.shape
    # Column direction: position (h, w) against (h', w) for every h'.
    q_col = query.permute(0, 3, 2, 1)  # (B, W, H, C')
    k_col = key.permute(0, 3, 1, 2)  # (B, W, C', H)
    energy_col = torch.matmul(q_col, k_col)  # (B, W, H, H')
    self_mask = torch.eye(h, dtype=torch.bool, device=query.device)  # (H, H')
    energy_col = energy_col.masked_fill(self_mask, float("-inf")).permute(0, 2, 1, 3)  # (B, H, W, H')
    # Row direction: position (h, w) against (h, w') for every w'.
    q_row = query.permute(0, 2, 3, 1)  # (B, H, W, C')
    k_row = key.permute(0, 2, 1, 3)  # (B, H, C', W)
    energy_row = torch.matmul(q_row, k_row)  # (B, H, W, W')

    attention = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)  # (B, H, W, H'+W')
    att_col, att_row = attention[..., :h], attention[..., h:]

    v_col = value.permute(0, 3, 1, 2)  # (B, W, C, H')
    out_col = torch.matmul(v_col, att_col.permute(0, 2, 3, 1))  # (B, W, C, H)
    v_row = value.permute(0, 2, 1, 3)  # (B, H, C, W')
    out_row = torch.matmul(v_row, att_row.permute(0, 1, 3, 2))  # (B, H, C, W)
    return out_col.permute(0, 2, 3, 1) + out_row.permute(0, 2, 1, 3)  # (B, C, H, W)


@torch.library.custom_op("seg::criss_cross_attention", mutates_args=())
def criss_cross_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Criss-cross attention as one op; see ``criss_cross_attention_reference``."""
    return criss_cross_attention_reference(query, key, value)


@criss_cross_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(value)


def _cca_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _cca_backward(ctx, grad: torch.Tensor):
    # Training differentiates the reference implementation, so the op trains exactly like the plain layer.
    inputs = ctx.saved_tensors
    _, vjp = torch.func.vjp(criss_cross_attention_reference, *inputs)
    return vjp(grad)


criss_cross_attention.register_autograd(_cca_backward, setup_context=_cca_setup_context)
