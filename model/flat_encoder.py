"""The encoder as the ONNX export writes it: the same layers and weights as ``nn.TransformerEncoder``, every
token one row of a ``[batch * tokens, d_model]`` matrix, and every shape fixed but the batch.

``nn.MultiheadAttention`` exports its shapes as arithmetic on the input's shape (``Shape``, ``Gather``,
``Concat``, ``Unsqueeze`` ...: 82 of the 169 nodes ONNX Runtime runs for the patch-4 BasicMotions model) and its
linear layers as ``MatMul`` and a separate ``Add`` on 3-D inputs. Here each linear layer is one ``Gemm`` with its
bias, and the graph has no shape arithmetic left (55 nodes). ``bench/patch_bench.py`` and the README ("The
encoder's graph without shape arithmetic") give what that saves per window.

>>> import torch
>>> from torch import nn
>>> layer = nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True)
>>> encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
>>> x = torch.randn(3, 4, 16)
>>> with torch.no_grad():
...     bool(torch.allclose(FlatEncoder(encoder, tokens=4)(x), encoder(x), atol=1e-5))
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class FlatEncoderLayer(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (its own modules, not copies) over token rows ``[batch * tokens, d]``."""

    def __init__(self, layer: nn.TransformerEncoderLayer, tokens: int) -> None:
        super().__init__()
        attention = layer.self_attn
        if not attention._qkv_same_embed_dim or attention.in_proj_bias is None or not attention.batch_first:
            raise ValueError("FlatEncoderLayer needs batch-first self-attention with one packed, biased input "
                             "projection")
        self.layer, self.tokens = layer, tokens
        self.heads, self.width = attention.num_heads, attention.embed_dim
        self.scale = 1.0 / math.sqrt(self.width // self.heads)

    def attend(self, rows: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention among each window's tokens, rows in and out."""
        attention, heads, width = self.layer.self_attn, self.heads, self.width
        qkv = F.linear(rows, attention.in_proj_weight, attention.in_proj_bias)  # [batch * tokens, 3 d]
        qkv = qkv.reshape(-1, self.tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0] * self.scale, qkv[1], qkv[2]  # [batch, heads, tokens, d / heads]
        mixed = torch.softmax(query @ key.transpose(-1, -2), dim=-1) @ value
        return attention.out_proj(mixed.transpose(1, 2).reshape(-1, width))

    def feed_forward(self, rows: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        return layer.linear2(layer.activation(layer.linear1(rows)))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if layer.norm_first:
            rows = rows + self.attend(layer.norm1(rows))
            return rows + self.feed_forward(layer.norm2(rows))
        rows = layer.norm1(rows + self.attend(rows))
        return layer.norm2(rows + self.feed_forward(rows))


class FlatEncoder(nn.Module):
    """``nn.TransformerEncoder`` (eval mode: no dropout, no mask) on ``[batch, tokens, d]``, computed on rows."""

    def __init__(self, encoder: nn.TransformerEncoder, tokens: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FlatEncoderLayer(layer, tokens) for layer in encoder.layers)
        self.norm, self.tokens = encoder.norm, tokens
        self.width = self.layers[0].width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.width)
        for layer in self.layers:
            rows = layer(rows)
        if self.norm is not None:
            rows = self.norm(rows)
        return rows.reshape(-1, self.tokens, self.width)


@contextlib.contextmanager
def flat_encoder_of(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` with its ``encoder`` computed by :class:`FlatEncoder` while the block runs (for the export), its
    own encoder back afterwards. The weights are the same objects."""
    encoder = net.encoder
    net.encoder = FlatEncoder(encoder, net.spec.tokens)
    try:
        yield net
    finally:
        net.encoder = encoder
