"""Live executor: sends a plan to a real endpoint.

`loadgen.client` is plain Python (http.client) and safe to import anywhere; `loadgen.runner` imports
Locust, which monkey-patches the standard library through gevent: import it only in the process
that runs the load.
"""
