"""Cost models: how long each op, layer and collective takes, and how much memory it needs.

Installed as ``autopar.cost_models``. The compute, communication, memory and pipeline models
arrive with the cost-model work (issue 3); tracing (``autopar.trace``) produces the per-op and
per-layer FLOPs, bytes and saved activations they consume.
"""
