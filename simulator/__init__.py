"""Virtual executor: the engine model, its SimPy replay, calibration, back-test and forecast.

The engine model (`simulator.engine`) has no clock: the simulator runs it on SimPy's clock and the
reference target (`simulator.target`) on the wall clock.
"""
