"""The segment job at bucket scale: what is done (`state`), what to do tonight (`plan`), where
the images come from (`source`), the Ray Data stages that do it (`stages`, `predictor`), the
rows they pass and keep (`schema`) and what the night reports (`summary`, `insight`).
docs/nightly.md explains the design."""
