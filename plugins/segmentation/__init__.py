"""The downstream-segmentation validator: train on synthetic, test on real (TSTR)."""
