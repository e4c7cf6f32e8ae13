"""The constants of the demo's protocol, as docs/demo-protocol.md fixes them (change both together, bump the version)."""

from __future__ import annotations

import hashlib
from pathlib import Path

PROTOCOL_VERSION = 4  # 2: generator version 2 (deterministic encoding); 3: end-to-end arms (--finetune); 4: unlabelled clips; docs/demo-protocol.md, Changes
PROTOCOL_DOC = "docs/demo-protocol.md"
SEEDS = (0, 1, 2, 3, 4)           # each seed fits the teachers and trains every student
BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 2026
MARGINS = {"top1": 3.0, "ece": 2.0, "nll": 0.05}   # the smallest improvement the demo is meant to see
TEST_FRAMES = (8, 4, 2, 1)        # paper 1's second claim: the same students with fewer frames at test time
FEWER_FRAMES = (4, 2, 1)
FLOPS_RATIO = 0.6                 # P2.4: "about half the teacher's compute", with room
SMALL_FRAMES = 4                  # P2.4 secondary: the masked student with half the extractor FLOPs
PRIMARY_SCHEME = "uniform"
UNLABELLED_CLIPS = 480            # version 4: unlabelled clips of the same generator (twice the labelled training set)
SMALL_UNLABELLED_CLIPS = 24       # with --small
UNLABELLED_SEED = 1000            # their generator seed: draws disjoint from the labelled clips' (seed 0)
UNLABELLED_SPLIT = "unlabelled"   # their windows' split in the cache (`manifest windows --split`)


def protocol_doc() -> Path | None:
    """The protocol file of this checkout (absent from an installed wheel)."""
    path = Path(__file__).resolve().parents[1] / PROTOCOL_DOC
    return path if path.is_file() else None


def describe_protocol(seeds: list[int], small: bool, finetune: bool = False, smaller_student: bool = False) -> dict:
    """Version, file, its sha256 where the file is here, and whether this run follows the protocol.
    Without `finetune` the run follows it for the arms it runs; version 3's arms are then "not run"."""
    path = protocol_doc()
    deviations = []
    if small:
        deviations.append("--small: 60 clips and short budgets (a smoke test)")
    if tuple(seeds) != SEEDS:
        deviations.append(f"seeds {seeds} instead of {list(SEEDS)}")
    return {
        "version": PROTOCOL_VERSION, "doc": PROTOCOL_DOC, "path": str(path) if path else None,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path else None,
        "followed": not deviations, "deviations": deviations, "finetune": finetune, "smaller_student": smaller_student,
        "margins": MARGINS, "bootstrap": {"draws": BOOTSTRAP_DRAWS, "seed": BOOTSTRAP_SEED, "level": 0.95},
        "primary_scheme": PRIMARY_SCHEME, "test_frames": list(TEST_FRAMES), "flops_ratio": FLOPS_RATIO,
        "unlabelled": {"clips": SMALL_UNLABELLED_CLIPS if small else UNLABELLED_CLIPS, "seed": UNLABELLED_SEED, "split": UNLABELLED_SPLIT},
    }
