"""Turn a model SPEC string into a model and example inputs, ready for ``autopar.trace``.

A SPEC is how a person names a model on the command line, without writing a script:

- ``path/to/file.py:factory`` — a Python file, imported by path, and a function in it;
- ``package.module:factory`` — an importable module and a function in it;
- ``path/to/config.json`` — a Hugging Face ``config.json``, built with ``transformers`` on the
  meta device (nothing is allocated, so an 80-layer model loads on a laptop).

A factory returns ``(model, example_inputs)`` or ``(model, example_inputs, example_kwargs)``.
It may take ``batch_size`` and ``seq_len`` keyword parameters; they are passed when given.
Every problem is a ``SpecError`` naming the SPEC, what was wrong and how to fix it, because the
CLI shows that message and nothing else.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from autopar.errors import SpecError

_MAX_DEFAULT_SEQ = 2048
_LM_SUFFIXES = ("ForCausalLM", "ForMaskedLM", "LMHeadModel")


@dataclass
class LoadedModel:
    """A model named by a SPEC, with the example inputs its factory (or config) chose."""

    model: nn.Module
    example_inputs: tuple[Any, ...]
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


def spec_source(spec: str, *, batch_size: int | None = None, seq_len: int | None = None
                ) -> dict[str, Any]:
    """How to load a model again, as a plan records it: the SPEC and the batch and sequence
    it was given (those left to their defaults are left out)."""
    given = (("spec", spec), ("batch", batch_size), ("seq_len", seq_len))
    return {key: value for key, value in given if value is not None}


def load_source(source: Mapping[str, Any]) -> LoadedModel:
    """Load the model a ``spec_source`` record names."""
    return load_spec(source["spec"], batch_size=source.get("batch"),
                     seq_len=source.get("seq_len"))


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception: enough to act on, short enough for one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}"[:300]


def load_spec(spec: str, *, batch_size: int | None = None, seq_len: int | None = None
              ) -> LoadedModel:
    """Load the model a SPEC names, with example inputs of ``batch_size`` samples.

    For a ``config.json``, ``batch_size`` defaults to 1 and ``seq_len`` to the model's maximum
    positions, capped at 2048. A factory receives ``batch_size``/``seq_len`` when they are
    given and it declares those parameters (otherwise its own defaults stand); giving one it
    does not declare is an error rather than a silently ignored setting.
    """
    if batch_size is not None and batch_size < 1:
        raise SpecError(f"batch size must be at least 1, got {batch_size} (model {spec!r})")
    if seq_len is not None and seq_len < 1:
        raise SpecError(f"sequence length must be at least 1, got {seq_len} (model {spec!r})")
    if spec.endswith(".json"):
        return _load_hf_config(spec, batch_size or 1, seq_len)
    target, sep, factory_name = spec.rpartition(":")
    if not sep or not target or not factory_name:
        if spec.endswith(".py"):
            raise SpecError(
                f"model {spec!r} names a file but no factory: write it as "
                f"'{spec}:FUNCTION', where FUNCTION returns (model, example_inputs)")
        raise SpecError(
            f"model {spec!r} has no ':' separator: write 'path/to/file.py:FUNCTION', "
            f"'package.module:FUNCTION' or a Hugging Face 'config.json' path")
    if target.endswith(".py"):
        module = _import_file(spec, Path(target))
    else:
        module = _import_module(spec, target)
    factory = _find_factory(spec, module, factory_name)
    result = _call_factory(spec, factory, factory_name, batch_size, seq_len)
    model, args, kwargs = _validate_result(spec, factory_name, result)
    return LoadedModel(model, args, kwargs, name=factory_name)


@contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    """Let a factory file import its neighbours, as ``python file.py`` would."""
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _import_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise SpecError(f"model {spec!r}: file {str(path)!r} not found; check the path "
                        f"(relative paths start from {str(Path.cwd())!r})")
    resolved = path.resolve()
    # Registered in sys.modules (dataclasses look their module up there) under a prefixed
    # name, so a file called e.g. "torch.py" or "models.py" cannot shadow a real package.
    name = f"autopar_spec_{resolved.stem}"
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"model {spec!r}: cannot import {str(path)!r} as Python; "
                        f"give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(resolved.parent):
            module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise SpecError(f"model {spec!r}: importing {str(path)!r} failed with "
                        f"{_first_line(exc)}; fix the file so that it imports") from exc
    return module


def _import_module(spec: str, target: str) -> ModuleType:
    if "/" in target or "\\" in target:
        raise SpecError(f"model {spec!r}: {target!r} is neither a .py file nor a module path; "
                        f"give 'path/to/file.py:FUNCTION' or 'package.module:FUNCTION'")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise SpecError(
                f"model {spec!r}: module {target!r} not found; install its package, add its "
                f"directory to PYTHONPATH, or give the file as 'path/to/file.py:FUNCTION'"
            ) from exc
        raise SpecError(f"model {spec!r}: importing module {target!r} failed with "
                        f"{_first_line(exc)}; install the missing package") from exc
    except Exception as exc:
        raise SpecError(f"model {spec!r}: importing module {target!r} failed with "
                        f"{_first_line(exc)}; fix the module so that it imports") from exc


def _public_callables(module: ModuleType) -> list[str]:
    """Functions and classes defined in the module itself (not ones it imported)."""
    return sorted(
        name for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__)


def _find_factory(spec: str, module: ModuleType, name: str) -> Callable[..., Any]:
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        available = ", ".join(_public_callables(module)) or "none"
        what = "is not callable" if factory is not None else "not found"
        raise SpecError(f"model {spec!r}: factory {name!r} {what} in the module; "
                        f"callables defined there: {available}")
    return factory


def _call_factory(spec: str, factory: Callable[..., Any], name: str, batch_size: int | None,
                  seq_len: int | None) -> Any:
    """Call the factory, passing batch size and sequence length only where it takes them."""
    try:
        params: Mapping[str, inspect.Parameter] = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass nothing
        params = {}
    kwargs: dict[str, Any] = {}
    for key, value, flag in (("batch_size", batch_size, "--batch"),
                             ("seq_len", seq_len, "--seq-len")):
        if value is None:
            continue
        if key in params:
            kwargs[key] = value
        else:
            raise SpecError(
                f"model {spec!r}: factory {name!r} takes no {key!r} parameter, so "
                f"{key}={value} ({flag}) cannot be applied; add a {key} parameter to it "
                f"or leave {flag} out")
    try:
        return factory(**kwargs)
    except Exception as exc:
        raise SpecError(f"model {spec!r}: factory {name!r} raised {_first_line(exc)}; "
                        f"fix the factory (run it directly to see the traceback)") from exc


def _validate_result(spec: str, name: str, result: Any
                     ) -> tuple[nn.Module, tuple[Any, ...], dict[str, Any]]:
    expected = "(model, example_inputs) or (model, example_inputs, example_kwargs)"
    if isinstance(result, nn.Module):
        raise SpecError(f"model {spec!r}: factory {name!r} returned only the model; "
                        f"return {expected} so autopar knows the input shapes")
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        got = (f"a tuple of {len(result)}" if isinstance(result, tuple)
               else type(result).__name__)
        raise SpecError(f"model {spec!r}: factory {name!r} returned {got}; return {expected}")
    model, inputs = result[0], result[1]
    kwargs = result[2] if len(result) == 3 else {}
    if not isinstance(model, nn.Module):
        raise SpecError(f"model {spec!r}: factory {name!r} returned {type(model).__name__} "
                        f"as the model; the first item must be a torch.nn.Module")
    if isinstance(inputs, torch.Tensor):
        args: tuple[Any, ...] = (inputs,)
    elif isinstance(inputs, (tuple, list)):
        args = tuple(inputs)
    else:
        raise SpecError(f"model {spec!r}: factory {name!r} returned example_inputs of type "
                        f"{type(inputs).__name__}; give a tensor or a tuple of positional "
                        f"inputs")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise SpecError(f"model {spec!r}: factory {name!r} returned example_kwargs of type "
                        f"{type(kwargs).__name__}; give a dict of keyword inputs by name")
    return model, args, dict(kwargs)


def _read_config(spec: str) -> dict[str, Any]:
    path = Path(spec)
    if not path.is_file():
        raise SpecError(f"model {spec!r}: file not found; check the path "
                        f"(relative paths start from {str(Path.cwd())!r})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"model {spec!r}: cannot read it as JSON ({_first_line(exc)}); "
                        f"give a Hugging Face config.json") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise SpecError(f"model {spec!r} is not a Hugging Face config.json: it has no "
                        f"\"model_type\" field; use the config.json from the model's "
                        f"repository (e.g. \"model_type\": \"llama\")")
    return data


def _load_hf_config(spec: str, batch_size: int, seq_len: int | None) -> LoadedModel:
    """Build a transformers model on the meta device from its config.json."""
    data = _read_config(spec)
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError as exc:
        raise SpecError(f"model {spec!r} is a Hugging Face config, which needs transformers: "
                        f"pip install 'autopar[hf]'") from exc
    model_type = data["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise SpecError(
            f"model {spec!r}: transformers {transformers.__version__} does not know "
            f"model_type {model_type!r}; upgrade transformers (pip install -U transformers) "
            f"or check the model_type spelling")
    try:
        config = CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as exc:
        raise SpecError(f"model {spec!r}: transformers rejected the config "
                        f"({_first_line(exc)}); fix the field it names") from exc
    config.use_cache = False  # a training step keeps no KV cache
    model = _build_hf_model(spec, transformers, config, data.get("architectures"))

    max_positions = next((v for v in (getattr(config, "max_position_embeddings", None),
                                      getattr(config, "n_positions", None))
                          if isinstance(v, int) and v > 0), None)
    if seq_len is None:
        seq_len = min(max_positions or _MAX_DEFAULT_SEQ, _MAX_DEFAULT_SEQ)
    elif max_positions is not None and seq_len > max_positions:
        raise SpecError(f"model {spec!r}: sequence length {seq_len} exceeds the config's "
                        f"maximum of {max_positions} positions; use a shorter --seq-len or "
                        f"raise that limit in the config")
    input_ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    kwargs: dict[str, Any] = {}
    if type(model).__name__.endswith(_LM_SUFFIXES):
        kwargs["labels"] = input_ids  # so the traced step includes the loss
    return LoadedModel(model, (input_ids,), kwargs, name=Path(spec).stem)


def _build_hf_model(spec: str, transformers: ModuleType, config: Any,
                    architectures: Any) -> nn.Module:
    """The class named in ``architectures``, else a causal LM, else the bare model.

    Parameters take the config's ``torch_dtype`` (e.g. bfloat16 for Llama 3), so parameter
    and activation bytes are those of a model loaded from the same repository.
    """
    named = architectures[0] if isinstance(architectures, list) and architectures else None
    cls = getattr(transformers, named, None) if isinstance(named, str) else None
    builders: list[Callable[[], nn.Module]] = []
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        # _from_config is what the Auto classes call: it applies the config's dtype, as
        # from_pretrained would, where cls(config) would leave float32.
        make = getattr(cls, "_from_config", cls)
        builders.append(lambda: make(config))
    builders.append(lambda: transformers.AutoModelForCausalLM.from_config(config))
    builders.append(lambda: transformers.AutoModel.from_config(config))
    failure: Exception | None = None
    for build in builders:
        try:
            with torch.device("meta"):
                return build()
        except Exception as exc:  # noqa: BLE001 - try the next, more generic class
            failure = failure or exc
    assert failure is not None
    raise SpecError(f"model {spec!r}: transformers could not build the model "
                    f"({_first_line(failure)}); check the config against the model's "
                    f"repository") from failure
