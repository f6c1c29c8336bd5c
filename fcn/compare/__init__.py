"""Compare an experiment's training runs from MLflow: a table, plots, and the champion alias.

Reads runs through `fcn.tracking`, so it works the same against the embedded local store and
a tracking server (`MLFLOW_TRACKING_URI`). One job per module: rows (runs read, sorted
within their validation data, ranked), table (CSV, Markdown), plots (curves, per-class IU),
promotion (--promote through the registry's champion rule), job (the whole comparison).
"""

from fcn.compare.job import Comparison, compare

__all__ = ["Comparison", "compare"]
