"""The student: standardised inputs, a pooled linear head, and (depth >= 1) a temporal transformer on top.

Each input is first standardised per feature with statistics of the training segments, stored in
the model (buffers), so a checkpoint carries its own preprocessing. Why: frozen features, random-
init ones above all, are dominated by a pattern shared by every clip (audio: clip-to-clip variation
~5 % of the magnitude); a per-token LayerNorm keeps that pattern and hides the class signal.

The pooled path is the logistic-regression probe made trainable: per input, the mean of its rows
and the mean of the second half minus the first half, dropout, one linear map per head. With
depth >= 1 a short temporal transformer over every input's rows adds its own logits (heads start at
zero, so training starts from the pooled model). On small data the pooled path alone generalises
best (the transformer memorises a few hundred clips); on motion-like features and larger data the
transformer adds what pooling loses. See docs/training.md for the measurements behind the defaults.

A missing input (absent from the cache for a segment, or masked in training) is replaced by learned
stand-ins of its own (a pooled vector, and a token for the transformer), so one model serves every
subset of its inputs (KARMMA).

The late-early feature of one row does not exist: it is a learned stand-in per input, not zero
(zero moved every demo student to ~10 % at one test frame). In training, each sample is pooled from
one random row of its window with probability `single_row` (default 0.2): the stand-in is learned,
and so is a mean that drifts with where a single row sits in time, so the head stays sane at any
row count (issue 15 §6).

Standardising then pooling equals pooling then standardising (both are affine per feature), so
the pooled path also takes rows pooled once (`pool`, then `pooled_logits`): fit-teachers pools a
dataset's rows once and fits on those (student/fit.py).
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
    dim: int = 64                          # transformer width
    depth: int = 0                         # transformer layers; 0 = the pooled linear head alone
    num_heads: int = 4
    dropout: float = 0.1                   # inside the transformer
    input_dropout: float = 0.5             # on the pooled features: the head's main regulariser
    single_row: float = 0.2                # training: probability a sample's late-early is its one-row stand-in
    extra: dict = field(default_factory=dict)  # room for later options without breaking old checkpoints

    def to_dict(self) -> dict:
        return asdict(self)


class Standardise(nn.Module):
    """(x - mean) / std per feature, with statistics set from training data (`set_statistics`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        # A constant feature carries nothing: divide by 1, not by ~0.
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def pool_rows(z: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, 2D]: mean over time, and mean(second half) - mean(first half)."""
    half = z.shape[1] // 2
    late = z[:, half:].mean(dim=1)
    early = z[:, :half].mean(dim=1) if half else late
    return torch.cat([z.mean(dim=1), late - early], dim=1)


class TemporalTransformer(nn.Module):
    """Per-input projection, time and modality embeddings, missing tokens, a transformer encoder, mean pool."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = len(cfg.input_dims)
        self.project = nn.ModuleList(nn.Sequential(nn.Linear(d, cfg.dim), nn.LayerNorm(cfg.dim)) for d in cfg.input_dims)
        self.modality_embedding = nn.Parameter(torch.randn(m, cfg.dim) * 0.02)
        self.time_embedding = nn.Parameter(torch.randn(cfg.frames, cfg.dim) * 0.02)
        self.missing_token = nn.Parameter(torch.randn(m, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.num_heads, 4 * cfg.dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor only helps with padding masks, which the student never uses.
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, norm=nn.LayerNorm(cfg.dim), enable_nested_tensor=False)

    def forward(self, standardised: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        tokens = []
        for m, (z, project) in enumerate(zip(standardised, self.project)):
            projected = project(z)
            # torch.where (not multiply) so garbage in an absent input cannot leak through.
            token = torch.where(present[:, m].view(-1, 1, 1), projected, self.missing_token[m].expand_as(projected))
            tokens.append(token + self.time_embedding[: z.shape[1]] + self.modality_embedding[m])
        return self.encoder(torch.cat(tokens, dim=1)).mean(dim=1)


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.standardise = nn.ModuleList(Standardise(d) for d in cfg.input_dims)
        # Zeros: an absent input starts as the training mean, i.e. "no evidence".
        self.missing_pooled = nn.Parameter(torch.zeros(2 * sum(cfg.input_dims)))
        # The late-early of one row (standardised units), per input; zeros: the value a head saved before it had one used.
        self.single_row = nn.Parameter(torch.zeros(sum(cfg.input_dims)))
        self.heads = nn.ModuleDict({h: nn.Linear(2 * sum(cfg.input_dims), c) for h, c in cfg.heads.items()})
        self.temporal = TemporalTransformer(cfg) if cfg.depth > 0 else None
        self.temporal_heads = nn.ModuleDict({h: nn.Linear(cfg.dim, c) for h, c in cfg.heads.items()}) if cfg.depth > 0 else None
        for head in (self.temporal_heads or {}).values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_load_state_dict_pre_hook(_without_single_row)

    def set_statistics(self, statistics: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Per input (mean [D], std [D]) of the training segments' features."""
        for standardise, (mean, std) in zip(self.standardise, statistics):
            standardise.set_statistics(mean, std)

    def pool(self, features: list[torch.Tensor], present: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per input [B, 2D] rows pooled as they are (mean, late - early; `pool_rows`), zero where absent, and
        bool [B] `moving`: late - early exists. In training, samples drawn by `draw_single_rows` are pooled from one row."""
        dtype = self.missing_pooled.dtype
        # Absent inputs are zeroed first: garbage (NaN rows of a failed segment) must not reach any gradient.
        features = [torch.where(present[:, m].view(-1, 1, 1), x.to(dtype), 0.0) for m, x in enumerate(features)]
        pooled = [pool_rows(x) for x in features]
        rows = features[0].shape[1]
        single, row = self.draw_single_rows(len(present), rows, generator, present.device)
        if single is None:
            return pooled, torch.full_like(present[:, 0], rows > 1)  # like `present`: a traced head follows its device (export)
        picked = torch.arange(len(present), device=present.device)
        return with_single_rows(pooled, [x[picked, row] for x in features], single), ~single

    def draw_single_rows(self, batch: int, rows: int, generator: torch.Generator | None,
                         device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Training only: bool [B] samples to pool from one row (probability cfg.single_row) and long [B] which row."""
        if not (self.training and self.cfg.single_row > 0 and rows > 1):
            return None, None
        single = self._draw((batch,), generator, device) < self.cfg.single_row
        row = (self._draw((batch,), generator, device) * rows).long().clamp(max=rows - 1)
        return single, row

    def pooled_logits(self, pooled: list[torch.Tensor], present: torch.Tensor, moving: torch.Tensor,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The pooled head on rows pooled by `pool`: standardise, stand-ins (absent input; late - early where not
        `moving`), input dropout, a linear map per head. `generator` draws the dropout (default: torch's global one)."""
        dtype = self.missing_pooled.dtype
        parts, at = [], 0
        for m, (standardise, p) in enumerate(zip(self.standardise, pooled)):
            d = standardise.mean.numel()
            p = torch.where(present[:, m:m + 1], p.to(dtype), 0.0)
            parts.append((p[:, :d] - standardise.mean) / standardise.std)
            parts.append(torch.where(moving.view(-1, 1), p[:, d:] / standardise.std, self.single_row[at:at + d]))
            at += d
        pooled = torch.cat(parts, dim=1)
        per_input = torch.cat([present[:, m:m + 1].expand(-1, 2 * d) for m, d in enumerate(self.cfg.input_dims)], dim=1)
        pooled = torch.where(per_input, pooled, self.missing_pooled)
        if self.training and self.cfg.input_dropout > 0:
            keep = self._draw(pooled.shape, generator, pooled.device) >= self.cfg.input_dropout
            pooled = pooled * keep / (1 - self.cfg.input_dropout)
        return {h: head(pooled) for h, head in self.heads.items()}

    @staticmethod
    def _draw(shape: tuple, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        if generator is None:
            return torch.rand(shape, device=device)
        return torch.rand(shape, generator=generator, device=generator.device).to(device)

    def forward(self, features: list[torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """features: per input [B, T, D_m]; present: bool [B, inputs] -> {head: logits [B, C]}."""
        pooled, moving = self.pool(features, present)
        logits = self.pooled_logits(pooled, present, moving)
        if self.temporal is not None:
            dtype = self.missing_pooled.dtype
            standardised = [s(torch.where(present[:, m].view(-1, 1, 1), x.to(dtype), 0.0)) for m, (s, x) in enumerate(zip(self.standardise, features))]
            encoded = self.temporal(standardised, present)
            logits = {h: v + self.temporal_heads[h](encoded) for h, v in logits.items()}
        return logits


def with_single_rows(pooled: list[torch.Tensor], one_row: list[torch.Tensor], single: torch.Tensor) -> list[torch.Tensor]:
    """Pooled inputs where `single` samples keep one row ([B, D] each) as their mean (their late - early is then absent)."""
    return [torch.where(single.view(-1, 1), torch.cat([r.to(p.dtype), torch.zeros_like(r, dtype=p.dtype)], dim=1), p) for p, r in zip(pooled, one_row)]


def _without_single_row(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A head saved before the single-row stand-in existed loads with zeros there (its behaviour then)."""
    key = prefix + "single_row"
    if key not in state_dict and prefix + "missing_pooled" in state_dict:
        state_dict[key] = torch.zeros_like(module.single_row)


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


NO_DECAY = ("modality_embedding", "time_embedding", "missing_token", "missing_pooled", "single_row")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only, never on norms, biases or learned stand-ins."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim < 2 or name.split(".")[-1] in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
