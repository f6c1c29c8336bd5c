"""Public entry point: the FCN nets (ARCHITECTURE.md, "Contracts"). They live in fcn.engine.models;
this module keeps the published import path `fcn.models.build_model`. Nothing inside fcn/ imports
it (the layer test checks that)."""

from collections.abc import Mapping

from fcn.engine.models import MODEL_NAMES, backbone_of, build_model

__all__ = ["MODEL_NAMES", "backbone_of", "build_from_config", "build_model"]


def build_from_config(config: Mapping, **options):
    """The untrained model a checkpoint's config.json (or a CheckpointConfig) describes."""
    # Imported here: `import fcn.models` stays plain PyTorch (no storage clients), as promised.
    from fcn.engine.checkpoint import CheckpointConfig

    if not isinstance(config, CheckpointConfig):
        config = CheckpointConfig.from_dict(config)
    return config.build_model(**options)
