"""A run: configs, the generator registry, stages with checkpoints, the pipeline, sampling."""
