"""CLIP in plain PyTorch: a ViT image tower that accepts kept-token indices, a causal text tower.

The image tower embeds all L patches and adds positions FIRST, then gathers the kept tokens, then
prepends the class token: compute scales with the kept count (FLIP; docs/algorithms.md).
The model knows kept indices, not how they were chosen. Attention goes through
F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from maskvlp.config import ModelConfig, check, choice

VOCAB_SIZE = 49408  # CLIP BPE


@dataclass(frozen=True)
class TowerShape:
    width: int
    layers: int
    heads: int


# Image towers: CLIP/ViT sizes (B matches CLIP ViT-B/16 with patch_size 16, L matches ViT-L/14).
VISION_PRESETS = {
    "tiny": TowerShape(128, 4, 4),
    "S": TowerShape(384, 12, 6),
    "B": TowerShape(768, 12, 12),
    "L": TowerShape(1024, 24, 16),
}
# Text towers: B matches CLIP's 12-layer 512-wide text transformer, L CLIP ViT-L/14's 768-wide one.
TEXT_PRESETS = {
    "tiny": TowerShape(128, 4, 4),
    "S": TowerShape(384, 12, 6),
    "B": TowerShape(512, 12, 8),
    "L": TowerShape(768, 12, 12),
}


# A family for scaling studies on a CPU (both towers alike): width and depth grow together, spanning
# about 48x in non-embedding parameters (w64 ~0.1M per tower to w256 ~4.7M). w128 has tiny's shape.
SCALING_FAMILY = {
    "w64": TowerShape(64, 2, 2),
    "w96": TowerShape(96, 3, 3),
    "w128": TowerShape(128, 4, 4),
    "w192": TowerShape(192, 5, 4),
    "w256": TowerShape(256, 6, 4),
}
VISION_PRESETS.update(SCALING_FAMILY)
TEXT_PRESETS.update(SCALING_FAMILY)

POS_EMBEDS = ("learned", "sincos")  # image positions: learned (CLIP) | fixed 2-D sin-cos (FLIP, MAE)
POOLS = ("cls", "avg")  # image feature: the class token (CLIP) | the mean of the kept tokens (FLIP)


def sincos_positions(grid: int, width: int, extent: int | None = None) -> torch.Tensor:
    """(grid*grid, width) fixed 2-D sin-cos positions (as MAE / FLIP): half the channels encode the
    row, half the column, each as sin and cos at geometrically spaced frequencies. `extent`: the grid
    the positions are measured in when the image is a resized one (resize), each patch at its centre
    in that grid's coordinates; None: the grid itself (positions 0 .. grid-1)."""
    if width % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {width}")
    freqs = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    steps = torch.arange(grid, dtype=torch.float64)
    if extent is not None and extent != grid:
        steps = (steps + 0.5) * (extent / grid) - 0.5
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class Block(nn.Module):
    """Pre-LN transformer block: fused qkv projection, SDPA, 4x GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def attention(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, shape: TowerShape, causal: bool):
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList([Block(shape.width, shape.heads) for _ in range(shape.layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, self.causal, use_reentrant=False)
            else:
                x = block(x, self.causal)
        return x


class VisionTower(nn.Module):
    def __init__(
        self,
        shape: TowerShape,
        image_size: int,
        patch_size: int,
        embed_dim: int,
        pos_embed: str = "learned",
        pool: str = "cls",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"model.image_size {image_size} is not a multiple of model.patch_size {patch_size}")
        if pos_embed not in POS_EMBEDS or pool not in POOLS:
            raise ValueError(f"model.pos_embed must be in {POS_EMBEDS} and model.pool in {POOLS}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.pool = pool
        self.pos_embed = pos_embed
        self._resized_sincos: dict[tuple[int, torch.device], torch.Tensor] = {}  # resize's fixed positions
        self.has_cls = pool == "cls"
        w = shape.width
        scale = w**-0.5
        self.patch_embed = nn.Conv2d(3, w, patch_size, stride=patch_size, bias=False)
        if self.has_cls:
            self.class_embedding = nn.Parameter(scale * torch.randn(w))
        rows = self.num_patches + int(self.has_cls)  # the class token's position comes first
        if pos_embed == "learned":
            self.positional_embedding = nn.Parameter(scale * torch.randn(rows, w))
        else:  # fixed: a buffer, so neither trained nor decayed; the class token's position is zero
            fixed = torch.cat([torch.zeros(int(self.has_cls), w), sincos_positions(self.grid, w)])
            self.register_buffer("positional_embedding", fixed)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(shape, causal=False)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))

    def positions(self, grid: int) -> torch.Tensor:
        """(grid*grid, width) patch positions for an image of `grid` x `grid` patches: the table itself
        at the built grid; for a smaller image (resize) the positions at its patches' centres, learned
        ones interpolated bicubically (as timm and open_clip resize them; gradients reach the table),
        sin-cos ones computed there."""
        table = self.positional_embedding[int(self.has_cls) :]
        if grid == self.grid:
            return table
        if self.pos_embed == "sincos":  # fixed: computed once per grid and device, not every step
            key = (grid, table.device)
            if key not in self._resized_sincos:
                self._resized_sincos[key] = sincos_positions(grid, table.shape[1], self.grid).to(table)
            return self._resized_sincos[key]
        square = table.T.reshape(1, -1, self.grid, self.grid)
        small = F.interpolate(square, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
        return small.reshape(table.shape[1], -1).T

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) normalised -> layer-0 tokens (B, L, width): patch embedding + position.
        Square images of any multiple of the patch size (resize trains on smaller ones)."""
        x = self.patch_embed(images)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        return x + self.positions(grid).to(x.dtype)

    def forward(self, images: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        """images: (B, 3, H, W) normalised; keep_idx: (B, n_keep) long or None (all patches).
        Returns image features (B, embed_dim), not normalised."""
        x = self.patch_tokens(images)
        if keep_idx is not None:  # None: every patch, and no gather (nor its scatter in backward)
            x = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
        if self.has_cls:
            cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.transformer(self.ln_pre(x))
        pooled = x[:, 0] if self.has_cls else x.mean(dim=1)
        return self.ln_post(pooled) @ self.proj


class TextTower(nn.Module):
    def __init__(self, shape: TowerShape, context_length: int, embed_dim: int, vocab_size: int = VOCAB_SIZE):
        super().__init__()
        w = shape.width
        self.token_embedding = nn.Embedding(vocab_size, w)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, w))
        self.transformer = Transformer(shape, causal=True)
        self.ln_final = nn.LayerNorm(w)
        self.proj = nn.Parameter(w**-0.5 * torch.randn(w, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, C) long, CLIP BPE with end-of-text as the largest id -> features (B, embed_dim)."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.ln_final(self.transformer(x))
        eot = tokens.argmax(dim=-1)  # CLIP pools at the end-of-text token (the largest id)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.proj


class CLIP(nn.Module):
    def __init__(
        self,
        vision: str = "tiny",
        text: str = "tiny",
        image_size: int = 64,
        patch_size: int = 8,
        embed_dim: int = 128,
        context_length: int = 32,
        pos_embed: str = "learned",
        pool: str = "cls",
        init_temperature: float = 0.07,
    ):
        super().__init__()
        for name, value, presets in (("vision", vision, VISION_PRESETS), ("text", text, TEXT_PRESETS)):
            if value not in presets:
                raise ValueError(f"model.{name} must be one of {', '.join(presets)}, got {value!r}")
        self.visual = VisionTower(VISION_PRESETS[vision], image_size, patch_size, embed_dim, pos_embed, pool)
        self.text = TextTower(TEXT_PRESETS[text], context_length, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))

    @classmethod
    def from_config(cls, m) -> CLIP:
        return cls(
            m.vision,
            m.text,
            m.image_size,
            m.patch_size,
            m.embed_dim,
            m.context_length,
            m.pos_embed,
            m.pool,
            m.init_temperature,
        )

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enabled
        self.text.transformer.grad_checkpointing = enabled

    def encode_image(
        self, images: torch.Tensor, keep_idx: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        feats = self.visual(images, keep_idx)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.text(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, keep_idx: torch.Tensor | None = None):
        """-> (image features, text features, logit scale); features L2-normalised."""
        return self.encode_image(images, keep_idx), self.encode_text(tokens), self.logit_scale.exp()

    @functools.lru_cache(maxsize=64)  # noqa: B019 (one entry per token count; the model lives as long as a run)
    def train_flops_per_sample(self, kept_tokens: int, embedded: int | None = None, text: int | None = None) -> float:
        """Training FLOPs per image-text pair with `kept_tokens` image tokens (docs/records.md):
        3 x forward (backward costs two forwards); forward = patch embedding of the `embedded` patches
        (None: all L; resize embeds a smaller image's) + per transformer block 2 x tokens x (block
        weights) + 4 x tokens^2 x width (the two attention matmuls), for the image tower at kept_tokens
        (+ 1 with a class token) and the text tower at `text` tokens (None: its context)."""

        def tower(transformer: Transformer, n: int) -> float:
            total = 0.0
            for block in transformer.blocks:
                w = block.proj.in_features
                total += 2 * n * (count_params(block) - 4 * w) + 4 * n * n * w  # minus the 2 LayerNorms
            return total

        vis = self.visual
        patch = 2 * (vis.num_patches if embedded is None else embedded) * vis.patch_embed.weight.numel()
        context = self.text.positional_embedding.shape[0] if text is None else text
        return 3 * (
            patch + tower(vis.transformer, kept_tokens + int(vis.has_cls)) + tower(self.text.transformer, context)
        )

    def nonembedding_params(self) -> dict[str, int]:
        """Parameters per tower without the embedding tables (patch embedding, token embedding, positions,
        class token): what "model size" means in scaling laws; the 49k-token table dominates tiny text towers."""
        vis, txt = self.visual, self.text
        embeds = [vis.patch_embed.weight, vis.positional_embedding, getattr(vis, "class_embedding", None)]
        vis_embed = sum(p.numel() for p in embeds if isinstance(p, nn.Parameter))
        txt_embed = txt.token_embedding.weight.numel() + txt.positional_embedding.numel()
        return {"vision": count_params(vis) - vis_embed, "text": count_params(txt) - txt_embed}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_section(m: ModelConfig) -> None:
    """Refuse out-of-range `model.*` values (params.validate asks this before any work starts)."""
    choice("model.vision", m.vision, tuple(VISION_PRESETS))
    choice("model.text", m.text, tuple(TEXT_PRESETS))
    check(m.patch_size >= 1, "model.patch_size", "must be >= 1", m.patch_size)
    s, p = m.image_size, m.patch_size
    check(s >= p and s % p == 0, "model.image_size", f"must be a multiple of model.patch_size={p}", s)
    check(m.embed_dim >= 1, "model.embed_dim", "must be >= 1", m.embed_dim)
    check(m.context_length >= 3, "model.context_length", "must be >= 3", m.context_length)
    choice("model.pos_embed", m.pos_embed, POS_EMBEDS)
    choice("model.pool", m.pool, POOLS)
    check(0 < m.init_temperature <= 1, "model.init_temperature", "must be in (0, 1]", m.init_temperature)
