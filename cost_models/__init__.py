"""Cost models: how long each op, layer and collective takes, and how much memory it needs.

Installed as ``autopar.cost_models``. Each model is small and usable on its own:

- ``compute``: one op's time on a device roofline with size-dependent efficiency;
- ``layers``: a traced layer's time and activations under tensor/sequence/context parallelism;
- ``communication``: alpha-beta collectives over the node/rail topology (nccl-tests calibrated);
- ``pipeline``: GPipe, 1F1B, interleaved 1F1B and zero-bubble schedules for unequal stages;
- ``memory``: model states under mixed precision and ZeRO 0-3, activations, buffers.

``autopar.estimate`` composes them; see docs/cost_models.md for formulas and sources.
"""
