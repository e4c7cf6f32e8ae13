"""The student: per-modality projection, modality embeddings, a short temporal transformer, linear heads.

A missing modality (absent from the cache for a segment, or masked in training) is replaced by
a learnable token of its own, so one model serves every subset of its inputs (KARMMA).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class ModelConfig:
    input_dims: list[int]                  # feature size D of each input, in --inputs order
    heads: dict[str, int]                  # output head -> classes
    frames: int = 8                        # T rows per segment and input
    dim: int = 256
    depth: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    extra: dict = field(default_factory=dict)  # room for later options without breaking old checkpoints

    def to_dict(self) -> dict:
        return asdict(self)


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m = len(cfg.input_dims)
        self.project = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.dim)) for d in cfg.input_dims)
        self.modality_embedding = nn.Parameter(torch.randn(m, cfg.dim) * 0.02)
        self.time_embedding = nn.Parameter(torch.randn(cfg.frames, cfg.dim) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(m, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, 4 * cfg.dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor only helps with padding masks, which the student never uses.
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False)
        self.heads = nn.ModuleDict({h: nn.Linear(cfg.dim, c) for h, c in cfg.heads.items()})

    def forward(self, features: list[torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """features: per input [B, T, D_m]; present: bool [B, inputs] -> {head: logits [B, C]}."""
        tokens = []
        for m, (x, project) in enumerate(zip(features, self.project)):
            projected = project(x.to(self.modality_embedding.dtype))
            # torch.where (not multiply) so NaN/garbage in an absent input cannot leak through.
            missing = self.missing_token[m].expand_as(projected)
            token = torch.where(present[:, m].view(-1, 1, 1), projected, missing)
            tokens.append(token + self.time_embedding[: x.shape[1]] + self.modality_embedding[m])
        encoded = self.encoder(torch.cat(tokens, dim=1))
        pooled = encoded.mean(dim=1)
        return {h: head(pooled) for h, head in self.heads.items()}


def mask_modalities(present: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each present input with probability `prob`, per sample, never all of a sample's inputs:
    where every present input was dropped, one of them (chosen at random) is kept."""
    if prob <= 0 or present.shape[1] < 2:
        return present
    draw = torch.rand(present.shape, generator=generator, device=present.device if generator is None else generator.device)
    kept = present & (draw.to(present.device) >= prob)
    emptied = present.any(dim=1) & ~kept.any(dim=1)
    if bool(emptied.any()):
        # Random scores on the present inputs only; the best one stays.
        scores = torch.rand(present.shape, generator=generator, device=draw.device).to(present.device)
        keep_one = torch.nn.functional.one_hot(torch.where(present, scores, torch.full_like(scores, -1.0)).argmax(dim=1), present.shape[1]).bool()
        kept = torch.where(emptied.view(-1, 1), keep_one, kept)
    return kept


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
