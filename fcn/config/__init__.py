"""Each job's settings as a frozen dataclass; the command line is generated from the fields.

One source of truth: the same object is parsed from the CLI, passed to the job, logged to
MLflow as params and saved beside each checkpoint, so a result always names what made it.
A field's `metadata["help"]` is its `--help` text; `metadata["choices"]` restricts values.
Every settings class is a `Settings`: `validate()` returns it or raises a one-line
ValueError naming the flag, called by the job's driver before Ray starts (fields.py).

Layout: fields.py (setting/required fields, the Settings base, to_dict/from_dict), cli.py
(build_parser, parse, --help groups), one module per job's settings. Imports nothing heavy:
every job's `--help` is answered without torch or Ray.
"""

from fcn.config.cli import GROUPS, build_parser, parse
from fcn.config.compare import CompareConfig
from fcn.config.cycle import CycleConfig
from fcn.config.evaluate import EvaluateConfig
from fcn.config.explain import ExplainConfig
from fcn.config.export import ExportConfig
from fcn.config.fields import Settings, flag, from_dict, placement, required, setting, to_dict
from fcn.config.import_model import ImportConfig
from fcn.config.ingest import IngestConfig
from fcn.config.segment import SegmentConfig
from fcn.config.train import MODELS, TrainConfig

__all__ = [
    "GROUPS",
    "MODELS",
    "CompareConfig",
    "CycleConfig",
    "EvaluateConfig",
    "ExplainConfig",
    "ExportConfig",
    "ImportConfig",
    "IngestConfig",
    "SegmentConfig",
    "Settings",
    "TrainConfig",
    "build_parser",
    "flag",
    "from_dict",
    "parse",
    "placement",
    "required",
    "setting",
    "to_dict",
]
