"""Finding and reading profile files: bundled ones, ``$AUTOPAR_PROFILE_PATH`` ones, and paths.

Every failure is a ``ProfileError`` that names the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import operator
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .models import Cluster, DeviceProfile, LinkProfile, NodeGroup, ProfileError

__all__ = [
    "DATA_DIR",
    "ENV_VAR",
    "check_count",
    "cluster_from_profile",
    "known_profiles",
    "load_cluster_file",
    "load_device",
    "load_link",
    "profile_error",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
"""The bundled profiles: ``devices/``, ``interconnects/`` and ``clusters/`` of TOML files."""

ENV_VAR = "AUTOPAR_PROFILE_PATH"
"""Directories (``os.pathsep``-separated) searched before the bundled profiles."""

KINDS = ("devices", "interconnects", "clusters")

_SINGULAR = {"devices": "device", "interconnects": "interconnect", "clusters": "cluster preset"}

_CLUSTER_KEYS = ("name", "groups", "source", "sources")
_GROUP_KEYS = (
    "name",
    "device",
    "nodes",
    "devices_per_node",
    "intra_node",
    "inter_node",
    "nics_per_node",
    "source",
    "sources",
)

# What each field expects, for error messages.
_EXPECTED = {
    "name": "a non-empty string",
    "memory_bytes": 'device memory in bytes: a positive integer or a string such as "80 GiB"',
    "memory_bandwidth": 'bytes/s: a positive number or a string such as "3.35 TB/s"',
    "peak_flops": (
        'a table of dense peak FLOP/s per dtype (fp32, tf32, bf16, fp16, fp8), e.g. bf16 = "989.4 '
        'TFLOP/s"'
    ),
    "matmul_efficiency": (
        "a list of [flops, fraction] pairs, FLOPs strictly increasing, fractions in (0, 1] and "
        "never decreasing"
    ),
    "memory_efficiency": "a fraction in (0, 1]",
    "kernel_launch_overhead_s": 'seconds >= 0, e.g. 5e-6 or "5 us"',
    "sources": "a table mapping field names to where each figure comes from",
    "bandwidth": 'bytes/s per direction: a positive number or a string such as "200 Gb/s"',
    "latency_s": 'seconds >= 0, e.g. 2.7e-6 or "2.7 us"',
    "allreduce_busbw": 'measured all-reduce bus bandwidth in bytes/s, e.g. "230 GB/s"',
    "source": "a string naming where the figures come from",
    "nodes": "a positive integer",
    "devices_per_node": "a positive integer",
    "nics_per_node": (
        "an integer >= 0: network adapters per node (one per rail), 0 for a single node without "
        "network"
    ),
    "groups": "an array of [[groups]] tables, at least one",
}


# -- errors ------------------------------------------------------------------------------------


def _loc(parts: tuple[int | str, ...], prefix: str) -> str:
    text = prefix
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def profile_error(error: ValidationError, *, path: Path | str | None, prefix: str) -> ProfileError:
    """Turn pydantic's errors into one ProfileError naming the file, the field and the fix."""
    messages = []
    first_field = None
    model_fields = _model_fields(error.title)
    for item in error.errors()[:3]:
        whole = "groups" if error.title == "Cluster" else "(top level)"
        field = _loc(tuple(item["loc"]), prefix) or whole
        first_field = first_field or field
        leaf = next((p for p in reversed(item["loc"]) if isinstance(p, str)), "")
        kind = item["type"]
        if kind == "missing":
            text = f"{field}: missing; expected {_EXPECTED.get(leaf, 'a value')}"
        elif kind == "extra_forbidden":
            allowed = ", ".join(model_fields) if model_fields else "see the docs"
            text = f"{field}: unknown field; allowed fields here: {allowed}"
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            got = repr(item.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            quiet = got in message or not item["loc"]  # a whole-model check: no one input
            text = f"{field}: {message}" + ("" if quiet else f" (got {got})")
            if leaf in _EXPECTED and kind != "value_error":
                text += f"; expected {_EXPECTED[leaf]}"
        messages.append(text)
    if error.error_count() > 3:
        messages.append(f"and {error.error_count() - 3} more")
    where = f"{path}: " if path is not None else ""
    return ProfileError(where + "; ".join(messages), path=path, field=first_field)


def _model_fields(title: str) -> list[str]:
    models: dict[str, type[BaseModel]] = {
        "DeviceProfile": DeviceProfile,
        "LinkProfile": LinkProfile,
        "NodeGroup": NodeGroup,
        "Cluster": Cluster,
    }
    model = models.get(title)
    return list(model.model_fields) if model is not None else []


def check_count(value: object, what: str, cluster: str) -> int:
    """``nodes`` / ``devices_per_node`` asked of a preset: a positive integer (numpy ints too)."""
    count = None
    if not isinstance(value, bool):
        try:
            count = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            count = None
    if count is None or count <= 0:
        raise ProfileError(
            f"{what} for cluster {cluster!r} must be a positive integer, got {value!r}: pass "
            f"{what}=1 or more",
            field=what,
        )
    return count


# -- finding files -----------------------------------------------------------------------------


def _user_dirs() -> list[Path]:
    value = os.environ.get(ENV_VAR, "")
    return [Path(part).expanduser() for part in value.split(os.pathsep) if part.strip()]


def _search_dirs(extra: Path | None = None) -> list[Path]:
    """Profile roots in search order: ``extra``, then ``$AUTOPAR_PROFILE_PATH``, then bundled."""
    dirs = [extra] if extra is not None else []
    return dirs + _user_dirs() + [DATA_DIR]


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _catalogue(kind: str, extra: Path | None = None) -> dict[str, Path]:
    """``normalized name -> file`` for one kind; earlier directories win."""
    found: dict[str, Path] = {}
    for root in _search_dirs(extra):
        folders = [root / kind] + ([root] if kind == "clusters" and root != DATA_DIR else [])
        for folder in folders:
            if not folder.is_dir():
                continue
            for file in sorted(folder.glob("*.toml")):
                found.setdefault(_key(file.stem), file)
    return found


def known_profiles() -> dict[str, list[str]]:
    """Every device, interconnect and cluster preset name: bundled, or in ``$AUTOPAR_PROFILE_PATH``.

    ``{"devices": [...], "interconnects": [...], "clusters": [...]}``, each sorted.
    """
    return {
        kind: sorted({file.stem for file in _catalogue(kind).values()}, key=str.lower)
        for kind in KINDS
    }


def _looks_like_path(name: str | Path) -> bool:
    text = str(name)
    return isinstance(name, Path) or text.endswith(".toml") or "/" in text or os.sep in text


def _find(
    kind: str, name: str, *, extra: Path | None = None, path: Path | None = None, field: str = ""
) -> Path:
    catalogue = _catalogue(kind, extra)
    file = catalogue.get(_key(name))
    if file is not None:
        return file
    names = sorted({found.stem for found in catalogue.values()}, key=str.lower)
    close = difflib.get_close_matches(_key(name), list(catalogue), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(catalogue[c].stem) for c in close)}?" if close else ""
    searched = ", ".join(
        str(d) + ("" if d.is_dir() else " (missing)") for d in _search_dirs(extra)[:-1]
    )
    where = f"; also searched {searched}" if searched else ""
    define = (
        "define it inline as a table"
        if field
        else f"add {name}.toml to a directory in ${ENV_VAR} (under {kind}/)"
    )
    prefix = "".join(f"{part}: " for part in (path, field) if part)
    raise ProfileError(
        f"{prefix}unknown {_SINGULAR[kind]} {name!r}.{hint} Known: {', '.join(names)}{where}. "
        f"Use one of these, a path to a .toml file, or {define}",
        path=path,
        field=field or None,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ProfileError(
            f"{path}: no such profile file; check the path, or use a bundled name "
            f"(autopar.hardware_profiles.known_profiles() lists them)",
            path=path,
        )
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(
            f"{path}: malformed TOML: {error}; fix the syntax there (format: https://toml.io)",
            path=path,
        ) from None
    except (UnicodeDecodeError, OSError) as error:
        raise ProfileError(f"{path}: cannot read the file: {error}", path=path) from None


def _profile_root(path: Path) -> Path:
    """The profile root a file sits in: ``root/clusters/x.toml`` -> ``root``; else its folder."""
    folder = path.resolve().parent
    return folder.parent if folder.name in KINDS else folder


# -- devices and links -------------------------------------------------------------------------


def _validate(model: type[Any], data: Mapping[str, Any], path: Path | None, prefix: str) -> Any:
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        raise profile_error(error, path=path, prefix=prefix) from None


def _device_from_file(path: Path) -> DeviceProfile:
    data = _read_toml(path)
    data.setdefault("name", path.stem)
    result: DeviceProfile = _validate(DeviceProfile, data, path, "")
    return result


def _link_from_file(path: Path) -> LinkProfile:
    data = _read_toml(path)
    data.setdefault("name", path.stem)
    result: LinkProfile = _validate(LinkProfile, data, path, "")
    return result


def load_device(name: str | Path) -> DeviceProfile:
    """A device by name (bundled or in ``$AUTOPAR_PROFILE_PATH``) or from a TOML file path."""
    if _looks_like_path(name):
        return _device_from_file(Path(name).expanduser())
    return _device_from_file(_find("devices", str(name)))


def load_link(name: str | Path) -> LinkProfile:
    """An interconnect by name (bundled or in ``$AUTOPAR_PROFILE_PATH``) or from a TOML file."""
    if _looks_like_path(name):
        return _link_from_file(Path(name).expanduser())
    return _link_from_file(_find("interconnects", str(name)))


def _merge(base: BaseModel, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base``'s fields with ``overrides`` on top; tables (peak_flops, sources) merge per key."""
    merged: dict[str, Any] = {name: getattr(base, name) for name in type(base).model_fields}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _resolve(kind: str, value: object, *, path: Path, field: str) -> DeviceProfile | LinkProfile:
    """A cluster file's ``device`` / ``intra_node`` / ``inter_node``: a name, a path or a table."""
    model: type[DeviceProfile] | type[LinkProfile] = (
        DeviceProfile if kind == "devices" else LinkProfile
    )
    from_file = _device_from_file if kind == "devices" else _link_from_file
    if isinstance(value, str):
        if _looks_like_path(value):
            target = Path(value).expanduser()
            if not target.is_absolute():
                target = path.resolve().parent / target
            return from_file(target)
        root = _profile_root(path)
        extra = None if root == DATA_DIR else root  # user profiles shadow bundled ones everywhere
        return from_file(_find(kind, value, extra=extra, path=path, field=field))
    if isinstance(value, dict):
        data = dict(value)
        base = data.pop("base", None)
        if base is not None:
            parent = _resolve(kind, base, path=path, field=f"{field}.base")
            data = _merge(parent, data)
        result: DeviceProfile | LinkProfile = _validate(model, data, path, field)
        return result
    known = ", ".join(known_profiles()[kind])
    raise ProfileError(
        f"{path}: {field}: expected the name of a {_SINGULAR[kind]} ({known}), a path to a .toml "
        f"file, or an inline table, got {value!r}",
        path=path,
        field=field,
    )


# -- clusters ----------------------------------------------------------------------------------


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: Path, field: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{field}.{key}" if field else key
            raise ProfileError(
                f"{path}: {where}: unknown field; allowed fields here: {', '.join(allowed)}",
                path=path,
                field=where,
            )
    for key in ("source", "sources"):
        if key in data and not isinstance(data[key], (str, dict)):
            where = f"{field}.{key}" if field else key
            raise ProfileError(
                f"{path}: {where}: expected a string (or a table of strings) naming sources",
                path=path,
                field=where,
            )


def _group(data: object, index: int, cluster_name: str, count: int, path: Path) -> NodeGroup:
    field = f"groups[{index}]"
    if not isinstance(data, dict):
        raise ProfileError(
            f"{path}: {field}: expected a [[groups]] table, got {data!r}", path=path, field=field
        )
    _check_keys(data, _GROUP_KEYS, path, field)
    for key in ("device", "intra_node", "inter_node"):
        if key not in data:
            kind = "devices" if key == "device" else "interconnects"
            raise ProfileError(
                f"{path}: {field}.{key}: missing; expected the name of a {_SINGULAR[kind]} "
                f"({', '.join(known_profiles()[kind])}) or an inline table",
                path=path,
                field=f"{field}.{key}",
            )
    fields = {key: value for key, value in data.items() if key not in ("source", "sources")}
    fields["device"] = _resolve("devices", data["device"], path=path, field=f"{field}.device")
    for key in ("intra_node", "inter_node"):
        fields[key] = _resolve("interconnects", data[key], path=path, field=f"{field}.{key}")
    fields.setdefault("nodes", 1)
    fields.setdefault("name", cluster_name if count == 1 else f"group{index}")
    result: NodeGroup = _validate(NodeGroup, fields, path, field)
    return result


def load_cluster_file(path: str | Path) -> Cluster:
    """Read a cluster TOML file (see docs/hardware_profiles.md for the format)."""
    file = Path(path).expanduser()
    data = _read_toml(file)
    _check_keys(data, _CLUSTER_KEYS, file, "")
    name = data.get("name", file.stem)
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        raise ProfileError(
            f"{file}: groups: {'missing' if groups is None else 'invalid'}; expected "
            f'{_EXPECTED["groups"]}, e.g.\n[[groups]]\ndevice = "H100-SXM5-80GB"\nnodes = 4\n'
            'devices_per_node = 8\nintra_node = "nvlink4-nvswitch"\ninter_node = "ib-ndr"\n'
            "nics_per_node = 8",
            path=file,
            field="groups",
        )
    cluster_name = name if isinstance(name, str) and name else file.stem
    built = [_group(group, i, cluster_name, len(groups), file) for i, group in enumerate(groups)]
    result: Cluster = _validate(Cluster, {"name": name, "groups": built}, file, "")
    return result


def cluster_from_profile(
    name: str | Path, *, nodes: int | None = None, devices_per_node: int | None = None
) -> Cluster:
    """``Cluster.from_profile``: a preset name or a cluster file, sized to ``nodes``."""
    if nodes is not None:
        nodes = check_count(nodes, "nodes", str(name))
    if devices_per_node is not None:
        devices_per_node = check_count(devices_per_node, "devices_per_node", str(name))
    if isinstance(name, str) and not _looks_like_path(name):
        file = _find("clusters", name)
    else:
        file = Path(name).expanduser()
    cluster = load_cluster_file(file)
    if nodes is None and devices_per_node is None:
        return cluster
    if len(cluster.groups) != 1:
        raise ProfileError(
            f"{file}: has {len(cluster.groups)} node groups, so nodes={nodes} is ambiguous: set "
            "nodes in each [[groups]] entry of the file and call Cluster.load, or combine presets "
            "with Cluster.heterogeneous",
            path=file,
            field="nodes",
        )
    group = cluster.groups[0]
    return cluster.with_nodes(
        nodes if nodes is not None else group.nodes, devices_per_node=devices_per_node
    )
