"""The segment job at bucket scale: what is done (`state`), what to do tonight (`plan`) and the
Ray Data stages that do it (`stages`). docs/nightly.md explains the design."""
