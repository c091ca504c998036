"""Fitting the engine model to measured runs (calibration) and judging it on others (back-test)."""
