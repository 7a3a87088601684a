"""Segmentation: SAM2 image prompts and video propagation."""
