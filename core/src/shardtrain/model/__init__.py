"""Models once trained: the artifact record, the per-framework specs, publishing to a stage,
loading back (verified), and registering in a model registry."""
