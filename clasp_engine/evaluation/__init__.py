"""Measuring segmentation quality: metrics (:mod:`.metrics`), the dataset presets
(:mod:`.protocols`) and the report figures (:mod:`.figures`, built as objects, written by callers)."""
