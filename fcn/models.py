"""Public entry point: the FCN nets (ARCHITECTURE.md, "Contracts"). They live in fcn.engine.models;
this module keeps the published import path `fcn.models.build_model`. Nothing inside fcn/ imports
it (the layer test checks that)."""

from fcn.engine.models import MODEL_NAMES, backbone_of, build_from_config, build_model

__all__ = ["MODEL_NAMES", "backbone_of", "build_from_config", "build_model"]
