"""Running researchers' code (templates) in processes with time, memory and size limits.

A layer of its own, on ``core`` only: the service and the CLI both render through it.
"""
