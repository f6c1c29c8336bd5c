"""The evaluate job's settings (jobs/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, placement, required, setting
from fcn.config.tiling import Tiling, check_tile, tile, tile_margin, tile_memory


@dataclass(frozen=True)
class EvaluateConfig(Settings):
    """Evaluate a checkpoint or registered model on a split, across Ray Train workers."""

    data: str = required("root of the ingested Parquet dataset")
    model: str = required("checkpoint directory URI, or an MLflow models:/ or runs:/ URI")
    split: str = setting("val", "split evaluated")
    limit: int | None = setting(None, "the first N images of the split only")
    experiment: str = setting("fcn-eval", "MLflow experiment of the evaluation run")
    workers: int = setting(
        2,
        "evaluation workers (the split is sharded, no image twice); 0: in the driver's own "
        "process (Ray Train's local mode: no worker actors, for small splits)",
    )
    gpu: bool = setting(False, "one GPU per worker")
    cpus_per_worker: float = setting(1.0, "logical CPUs reserved per worker")
    placement_resource: str | None = placement("evaluation workers")
    storage: str | None = setting(None, "Ray Train run storage (default: a temp dir)")
    tile: str = tile()
    tile_memory_mb: int = tile_memory()
    tile_margin: int | None = tile_margin()

    def tiling(self) -> Tiling:
        return Tiling(self.tile, self.tile_memory_mb << 20, self.tile_margin)

    def validate(self) -> EvaluateConfig:
        """Self; a ValueError naming the flag (before Ray or MLflow is touched)."""
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 (the driver) or more, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1 (leave it out for the whole split), "
                             f"got {self.limit}")  # fmt: skip
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        check_tile(self.tile, self.tile_memory_mb, self.tile_margin)
        return self
