"""Find the model's layer units and its runs of repeated blocks, from the module tree alone.

A *unit* is a module a pipeline may cut around: each child of a block container (a
``ModuleList`` or ``Sequential`` of parameter-holding modules, the shallowest ones found) and
every other parameter-holding module at the highest level that contains no such container
(embeddings, final norm, head). Ops of no unit (model-level glue) join the unit that ran before.

A *run* is a stretch of consecutive container children with the same *signature* (module types,
attribute names and parameter shapes, recursively). Only the first two blocks of a run are
traced; the rest are copies of the second, which keeps tracing time flat in depth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

CONTAINERS = (nn.ModuleList, nn.Sequential)


def module_signature(module: nn.Module, _cache: dict[int, str] | None = None) -> str:
    """A short hash of a module's structure: same signature means same computation and cost."""
    cache = {} if _cache is None else _cache
    key = id(module)
    if key not in cache:
        parts = [type(module).__qualname__]
        for name, p in module.named_parameters(recurse=False):
            parts.append(f"p:{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad}")
        for name, b in module.named_buffers(recurse=False):
            if b is not None:
                parts.append(f"b:{name}:{tuple(b.shape)}:{b.dtype}")
        for name, child in module.named_children():
            parts.append(f"c:{name}:{module_signature(child, cache)}")
        cache[key] = hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
    return cache[key]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


@dataclass(frozen=True)
class Run:
    """``length`` consecutive identical blocks of ``container``, from index ``start`` on."""

    container: str
    start: int
    length: int
    signature: str

    def block(self, i: int) -> str:
        return _join(self.container, str(self.start + i))


@dataclass
class ModelStructure:
    """Units and repeated runs of one model."""

    units: list[str]
    runs: list[Run]
    signatures: dict[str, str]

    def unit_of(self, module_path: str) -> str | None:
        """The unit a module path belongs to (its deepest ancestor-or-self unit), if any."""
        path = module_path
        while True:
            if path in self._unit_set:
                return path
            if not path:
                return None
            path = path.rpartition(".")[0]

    def __post_init__(self) -> None:
        self._unit_set = set(self.units)


def _block_containers(model: nn.Module, min_children: int) -> list[str]:
    """The shallowest ModuleList/Sequential modules holding ``min_children`` or more
    parameterised children (paths relative to ``model``)."""
    found: list[str] = []

    def visit(module: nn.Module, path: str) -> None:
        if (isinstance(module, CONTAINERS)
                and sum(map(_has_params, module.children())) >= min_children):
            found.append(path)
            return
        for name, child in module.named_children():
            visit(child, _join(path, name))

    visit(model, "")
    return found


def _holds_block_run(module: nn.Module, cache: dict[int, str]) -> bool:
    """Whether ``module`` contains a container with two consecutive identical composite blocks.

    That makes it a *stage* (ResNet, Swin) whose blocks should be layers of their own. A
    transformer block holds only distinct sublayers, or runs of bare linears (an MLP), so it
    stays one layer.
    """
    for sub in module.modules():
        if sub is module or not isinstance(sub, CONTAINERS):
            continue
        blocks = [c for c in sub.children() if _has_params(c) and next(c.children(), None)]
        signatures = [module_signature(c, cache) for c in blocks]
        if any(a == b for a, b in zip(signatures, signatures[1:], strict=False)):
            return True
    return False


def analyse(model: nn.Module) -> ModelStructure:
    """Units, containers and runs of ``model`` (no tracing: the module tree is enough).

    A model without any container of two or more blocks (ALBERT's one shared layer, called
    once per depth) falls back to containers of one: each call of that block is then a layer.
    """
    cache: dict[int, str] = {}
    units: list[str] = []
    block_lists: list[str] = []
    min_children = 2 if _block_containers(model, 2) else 1

    def collect(module: nn.Module, path: str) -> None:
        containers = {_join(path, c) for c in _block_containers(module, min_children)}

        def expand(container: nn.Module, cpath: str) -> None:
            """Children of a container are units; nested containers and stages are opened.

            A container of *stages* holds only distinct children (each stage its own width);
            one that repeats children is a list of blocks, and a block holding identical
            experts stays one block.
            """
            block_lists.append(cpath)
            blocks = [c for c in container.children() if _has_params(c)]
            distinct = len({module_signature(c, cache) for c in blocks}) == len(blocks)
            for name, child in container.named_children():
                child_path = _join(cpath, name)
                if isinstance(child, CONTAINERS):
                    expand(child, child_path)
                elif _has_params(child) and distinct and _holds_block_run(child, cache):
                    collect(child, child_path)
                elif _has_params(child):
                    units.append(child_path)

        def visit(m: nn.Module, mpath: str) -> None:
            for name, child in m.named_children():
                child_path = _join(mpath, name)
                if child_path in containers:
                    expand(child, child_path)
                elif any(c.startswith(child_path + ".") for c in containers):
                    visit(child, child_path)
                elif _has_params(child):
                    units.append(child_path)

        if path in containers:
            expand(module, path)
        else:
            visit(module, path)

    collect(model, "")
    if not units:
        units = [""]

    modules = dict(model.named_modules())
    runs: list[Run] = []
    for container in block_lists:
        children = list(modules[container].named_children())
        i = 0
        while i < len(children):
            sig = module_signature(children[i][1], cache)
            j = i + 1
            while j < len(children) and module_signature(children[j][1], cache) == sig:
                j += 1
            if j - i >= 3 and children[i][0].isdigit() and _has_params(children[i][1]):
                runs.append(Run(container, int(children[i][0]), j - i, sig))
            i = j
    signatures = {u: module_signature(modules[u], cache) for u in units}
    return ModelStructure(units, runs, signatures)


@dataclass(frozen=True)
class Renaming:
    """Maps module paths of the shortened model back to the original model's paths."""

    prefixes: dict[str, str]

    def __call__(self, path: str) -> str:
        for short, original in self.prefixes.items():
            if path == short or path.startswith(short + "."):
                return original + path[len(short):]
        return path


@contextmanager
def shortened(model: nn.Module, runs: list[Run]) -> Iterator[Renaming]:
    """Temporarily drop all but the first two blocks of every run from their containers.

    Children are renumbered in place (``ModuleList`` and ``Sequential`` index by position), and
    the original children are put back on exit whatever happens. The yielded ``Renaming`` maps
    the new paths back to the original ones.
    """
    modules = dict(model.named_modules())
    dropped: dict[str, set[str]] = {}
    for run in runs:
        dropped.setdefault(run.container, set()).update(
            str(run.start + i) for i in range(2, run.length))
    saved: list[tuple[nn.Module, dict[str, nn.Module | None]]] = []
    prefixes: dict[str, str] = {}
    try:
        for container, names in dropped.items():
            module = modules[container]
            kept = [(n, m) for n, m in module._modules.items() if n not in names]
            saved.append((module, module._modules))
            module._modules = {str(pos): m for pos, (_, m) in enumerate(kept)}
            for pos, (name, _) in enumerate(kept):
                if str(pos) != name:
                    prefixes[_join(container, str(pos))] = _join(container, name)
        yield Renaming(prefixes)
    finally:
        for module, children in saved:
            module._modules = children
