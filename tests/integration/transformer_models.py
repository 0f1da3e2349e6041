"""Vision transformers for tests: a DeiT-style tiny ViT of our own, and torchvision's ViT-B/16 and
Swin-T with random weights calibrated so that their logits stay sane.

The worker imports `build_tiny_deit` by `module:factory` (this folder is on its PYTHONPATH).
"""

import torch
from torch import nn
from torchvision.models import swin_t, vit_b_16

VIT_SIZE = 64
"""ViT-B/16 and Swin-T run on 64 × 64 inputs here: a 4 × 4 patch grid, and 16 × 16 to 2 × 2."""


class Attention(nn.Module):
    """Multi-head self-attention over (N, T, D) tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """A pre-norm transformer block: attention and a GELU MLP, each around a residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyDeit(nn.Module):
    """DeiT's layout in miniature: patch embedding, a class and a distillation token, position
    embeddings, pre-norm blocks, and the mean of a class-token head and a distillation head."""

    def __init__(  # noqa: PLR0913 - the architecture's dimensions, each a manifest kwarg
        self,
        height: int = 16,
        width: int = 24,
        patch: int = 4,
        dim: int = 16,
        depth: int = 2,
        classes: int = 3,
    ) -> None:
        super().__init__()
        tokens = (height // patch) * (width // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 2, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads=2) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.head_dist = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        extra = torch.cat([self.cls_token, self.dist_token], dim=1).expand(x.shape[0], -1, -1)
        tokens = self.norm(self.blocks(torch.cat([extra, patches], dim=1) + self.pos_embed))
        return (self.head(tokens[:, 0]) + self.head_dist(tokens[:, 1])) / 2


def build_tiny_deit() -> TinyDeit:
    """A `TinyDeit` with the default dimensions (16 × 24 inputs, a 4 × 6 grid), random weights."""
    torch.manual_seed(0)
    model = TinyDeit()
    with torch.no_grad():
        for parameter in (model.cls_token, model.dist_token, model.pos_embed):
            parameter.normal_(std=0.5)
    return model.eval()


def _small_head(head: nn.Linear) -> None:
    """torchvision zeroes ViT's head (every logit 0, every gradient 0): a small random one."""
    with torch.no_grad():
        head.weight.normal_(std=0.05)
        head.bias.zero_()


def random_vit_b_16(classes: int = 10) -> nn.Module:
    """torchvision's ViT-B/16 on 64 × 64 inputs, random weights; LayerNorm keeps it sane."""
    torch.manual_seed(0)
    model = vit_b_16(weights=None, image_size=VIT_SIZE, num_classes=classes)
    _small_head(model.heads.head)
    return model.eval()


def random_swin_t(classes: int = 10) -> nn.Module:
    """torchvision's Swin-T with random weights and a small random head."""
    torch.manual_seed(0)
    model = swin_t(weights=None, num_classes=classes)
    _small_head(model.head)
    return model.eval()
