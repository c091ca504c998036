"""Real engines as load-test targets: build, model and launch them on loopback.

`simulator/` stays pure: this package holds the processes surgecast starts and talks to.
"""
