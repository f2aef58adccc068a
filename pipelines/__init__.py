"""Pipelines: configs, files, data generation, Optuna and the `jetflows` command line.

The only layer that touches the disk or parses arguments; it calls `convae` and `flows`.
"""
