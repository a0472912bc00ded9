"""Hardware profiles: devices, interconnects and cluster presets, each figure with its source.

Installed as ``autopar.hardware_profiles``. The bundled profiles arrive with the cost-model
work (issue 3).
"""
