"""gor_det.export."""
