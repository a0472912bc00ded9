"""Write profile fields as TOML a person can read and edit (the standard library only reads it).

Only what profiles hold: strings, numbers, lists of numbers or of number pairs, and tables of
those one level deep.
"""

from __future__ import annotations

import json
from typing import Any


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_toml(fields: dict[str, Any], header: str = "") -> str:
    """``fields`` as TOML: plain keys first, then one ``[table]`` per dict value."""
    lines = [f"# {line}" for line in header.splitlines()]
    tables = {k: v for k, v in fields.items() if isinstance(v, dict)}
    for key, value in fields.items():
        if key in tables or value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], (list, tuple)):
            lines.append(f"{_key(key)} = [")
            lines.extend(f"    {_value(v)}," for v in value)
            lines.append("]")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables.items():
        lines.append("")
        lines.append(f"[{_key(key)}]")
        lines.extend(f"{_key(k)} = {_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
