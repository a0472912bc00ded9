"""``autopar.cluster``: the hardware a plan runs on, re-exported from ``autopar.hardware_profiles``.

The profiles package lives in the repository's top-level ``hardware_profiles/`` directory and is
installed as ``autopar.hardware_profiles`` (setuptools ``package-dir``). In a source checkout used
through ``PYTHONPATH`` without ``pip install -e .`` that name does not exist yet, so this module
registers the directory under it first; either way there is one copy of each class.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import autopar

_NAME = "autopar.hardware_profiles"


def _hardware_profiles() -> ModuleType:
    try:
        return importlib.import_module(_NAME)
    except ModuleNotFoundError as error:
        if error.name != _NAME:
            raise
    directory = Path(__file__).resolve().parent.parent / "hardware_profiles"
    spec = importlib.util.spec_from_file_location(
        _NAME, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - the directory is part of the repo
        raise ImportError(f"cannot import {_NAME}: {directory} is missing; reinstall autopar")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    autopar.hardware_profiles = module
    return module


if TYPE_CHECKING:  # type checkers see the source directory; the runtime sees one package
    from hardware_profiles import (
        Cluster,
        DeviceProfile,
        LinkProfile,
        NodeGroup,
        ProfileError,
        known_profiles,
    )
else:
    _profiles = _hardware_profiles()
    Cluster = _profiles.Cluster
    DeviceProfile = _profiles.DeviceProfile
    LinkProfile = _profiles.LinkProfile
    NodeGroup = _profiles.NodeGroup
    ProfileError = _profiles.ProfileError
    known_profiles = _profiles.known_profiles

__all__ = [
    "Cluster",
    "DeviceProfile",
    "LinkProfile",
    "NodeGroup",
    "ProfileError",
    "known_profiles",
]
