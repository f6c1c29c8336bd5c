"""Public entry point: the paper's scores (ARCHITECTURE.md, "Contracts"). They live in
fcn.engine.metrics; this module keeps the published import path `fcn.metrics.confusion_matrix` /
`fcn.metrics.scores`. Nothing inside fcn/ imports it (the layer test checks that)."""

from fcn.engine.metrics import SCORE_NAMES, confusion_matrix, scores

__all__ = ["SCORE_NAMES", "confusion_matrix", "scores"]
