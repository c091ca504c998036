"""Load-test targets surgecast starts and talks to: the reference server (the engine model on the
wall clock), llama.cpp's llama-server and vLLM for CPU, each on loopback; and what surgecast
reads of an engine's Prometheus metrics.
"""
