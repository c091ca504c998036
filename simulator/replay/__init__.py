"""The engine model on SimPy's clock: replicas, the fleet, the simulated users, the ledger."""
