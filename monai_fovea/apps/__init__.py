"""Runnable entry points (training loops, demo) used by the bundles and tutorials; one module per pipeline."""
