"""Virtual executor: the engine model, its SimPy replay, fitting it to measurements, forecasting.

Rooms, each importing only those before it:
- `simulator.engine`: the engine without a clock (scheduler, paged KV cache, step cost, the drive
  loop every clock shares).
- `simulator.deploy`: deployments as data: the catalog of GPUs, models and number formats (a
  user's own files over the shipped one), and each deployment's memory in GiB.
- `simulator.replay`: the engine on SimPy's clock (replicas, a fleet with routing, admission and
  autoscaling, the simulated users, the ledger of what happened to each request).
- `simulator.fit`: calibration from measured records, and back-tests of what it predicts.
- `simulator.forecast`: the capacity search over fleet sizes at each scale of the traffic.

The reference target (`targets.reference_server`) runs the same engine on the wall clock.
"""
