"""Per-task training steps that meer-train drives besides MEER itself (the EUM/SRT and MaskMTL baselines)."""
