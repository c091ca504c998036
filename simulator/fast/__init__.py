"""The fast core: the simulator's model compiled (see simulator.fast.sim)."""
