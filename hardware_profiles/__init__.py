"""Hardware profiles: devices, interconnects and cluster presets, each figure with its source.

Installed as ``autopar.hardware_profiles``::

    from autopar.hardware_profiles import Cluster

    cluster = Cluster.from_profile("dgx-h100", nodes=128)   # 1024 H100s
    cluster.device.peak("bf16")                              # 989.4e12 FLOP/s, dense
    cluster.device.matmul_efficiency_at(2 * 8192**3)         # ~0.80 of peak

The bundled TOML files live in ``data/{devices,interconnects,clusters}/``; your own go in a
directory named by ``$AUTOPAR_PROFILE_PATH`` or are loaded by path. ``docs/hardware_profiles.md``
describes the format, every default and where each number comes from.
"""

from .loader import known_profiles
from .models import Cluster, DeviceProfile, LinkProfile, NodeGroup, ProfileError

__all__ = [
    "Cluster",
    "DeviceProfile",
    "LinkProfile",
    "NodeGroup",
    "ProfileError",
    "known_profiles",
]
