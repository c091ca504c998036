"""Contracts of surgecast: scenario spec, traffic plan, records, metrics and SLOs.

Light dependencies only (pydantic, numpy, PyYAML): never imports locust or gevent.
"""

from pathlib import Path

CATALOG = Path(__file__).parent
