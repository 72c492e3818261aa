"""gor_det.engine."""
