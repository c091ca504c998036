"""surgecast: load-test GenAI endpoints, calibrate a SimPy model, forecast capacity."""

__version__ = "0.1.0"
