"""Serving: per-task models out of a run (export), batch scoring (predict), the paper's online
metric offline (replay), and encoding files with a run's vocabulary (encode)."""
