"""Capacity forecasts: the fewest replicas meeting every SLO at each scale of the traffic."""
