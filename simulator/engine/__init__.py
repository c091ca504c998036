"""The engine model without a clock: scheduler, paged KV cache, step cost and the drive loop."""
