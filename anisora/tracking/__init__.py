"""Experiment tracking: W&B run identity and telemetry, dashboards as code, sweep objectives and their plots."""
