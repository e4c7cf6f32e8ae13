"""A small spatio-temporal layout transformer: the fitted teacher for `layout` rows (boxes per frame).

As the object-detection teacher of Radevski et al. (after STLT): each frame's boxes (coordinates,
score and a category embedding) attend to each other around a frame token (spatial encoder), the
frame tokens with time embeddings attend over time around a class token (temporal encoder), and a
linear map per head reads the class token. Padding slots (valid 0) are masked out of the spatial
attention. Rows are read as extract/boxes.py writes them: K boxes x [x1, y1, x2, y2, category,
score, valid]. It has the Student's interface (`model(features, present)`, `heads`, `cfg`,
`set_statistics`), so fit-teachers cross-fits it like its other heads.
"""

from __future__ import annotations

import torch
from torch import nn

from egodistill.cache.records import BOX_FIELDS
from egodistill.student.model import ModelConfig

BOX_VALUES = len(BOX_FIELDS)  # x1, y1, x2, y2, category, score, valid: the row extract writes (cache/records.py BoxRow)
LAYOUT_MAX_LR = 3e-3  # fit-teachers' peak rate for this model: at the pooled head's 1e-2 about one fit in six never left chance
MAX_CATEGORIES = 64   # 0 padding, 1 hand, 2 + N object placeholder N; larger ids share the last embedding


def is_layout_width(dim: int) -> bool:
    return dim > 0 and dim % BOX_VALUES == 0


class LayoutTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if len(cfg.input_dims) != 1 or not is_layout_width(cfg.input_dims[0]):
            raise ValueError(f"a layout transformer reads one input of K x {BOX_VALUES} values, got widths {cfg.input_dims}")
        self.cfg = cfg
        self.max_boxes = cfg.input_dims[0] // BOX_VALUES
        d = cfg.dim
        self.box = nn.Sequential(nn.Linear(5, d), nn.GELU(), nn.Linear(d, d))  # x1, y1, x2, y2, score
        self.category = nn.Embedding(MAX_CATEGORIES, d)
        nn.init.normal_(self.category.weight, std=0.02)  # small: where a box is must not drown under what it is
        self.frame_token = nn.Parameter(torch.randn(d) * 0.02)
        self.class_token = nn.Parameter(torch.randn(d) * 0.02)
        self.time_embedding = nn.Parameter(torch.randn(cfg.frames, d) * 0.5)  # order carries the motion: visible from the start

        def encoder(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d, cfg.num_heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)

        self.spatial = encoder(1)
        self.temporal = encoder(max(cfg.depth, 1))
        self.heads = nn.ModuleDict({h: nn.Linear(d, c) for h, c in cfg.heads.items()})

    def set_statistics(self, statistics) -> None:
        """Coordinates are already in [0, 1] and categories are ids: nothing to standardise."""

    def forward(self, features: list[torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """features: [[B, T, K*7]]; present: bool [B, 1] -> {head: logits [B, C]}."""
        x = features[0].float()
        b, t, _ = x.shape
        # Absent segments (NaN rows of a failed one) become all padding: only the frame tokens remain.
        x = torch.where(present[:, :1].view(-1, 1, 1) & torch.isfinite(x), x, 0.0)
        boxes = x.view(b * t, self.max_boxes, BOX_VALUES)
        padding = boxes[..., 6] < 0.5
        category = boxes[..., 4].round().long().clamp(0, MAX_CATEGORIES - 1)
        tokens = self.box(torch.cat([boxes[..., :4], boxes[..., 5:6]], dim=-1)) + self.category(category)
        tokens = torch.cat([self.frame_token.expand(b * t, 1, -1), tokens], dim=1)
        ignore = torch.cat([torch.zeros(b * t, 1, dtype=torch.bool, device=x.device), padding], dim=1)
        frames = self.spatial(tokens, src_key_padding_mask=ignore)[:, 0].view(b, t, -1) + self.time_embedding[:t]
        sequence = torch.cat([self.class_token.expand(b, 1, -1), frames], dim=1)
        encoded = self.temporal(sequence)[:, 0]
        return {h: head(encoded) for h, head in self.heads.items()}
