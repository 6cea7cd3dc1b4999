"""Releasing what TensorFlow's gradient registry keeps of finished traces.

Inside a `tf.function`, every op made with `tf.custom_gradient` (the swish of
EfficientNet, for one) registers its gradient in TensorFlow's global registry under a
new name, "CustomGradient-N", and never removes it. The registered closure holds
tensors of the traced graph, so the graph stays alive as long as the process
(tensorflow/tensorflow#27492, #97697): about 28 MB per trace of EfficientNet-B0's
forward pass at 32 px, about 120 MB per `FineTuner.fit` of it. TensorFlow has no call
that releases them (keras-team/tf-keras#898 proposes purging them all in
`clear_session`), so it is written here.

Only entries added during one of finetunekit's own calls are considered, and of those
only the ones of Keras' own step functions (the train, test and predict steps that
`fit`, `evaluate` and `predict` trace, which compute their gradients inside the trace
and which nothing differentiates from outside) whose graph nothing can use any more:
its trace has finished and no live `ConcreteFunction` or `AtomicFunction` holds it.
A function of the caller's, traced meanwhile (by a callback, or another thread), is
never touched: it may be called inside another function and differentiated later,
through a gradient hook that holds its graph and nothing else. Entries still in use
are looked at again by the next release (the model of the last fit keeps its train
function until the model goes, so its entries go at the fit after).

Looking costs a full garbage collection and a walk of the heap (0.2-0.3 s after a fit of
MobileNetV2, whatever the number of entries), so a fit whose steps added only a few
entries (Keras' optimizer registers one per traced training step: two a fit of a base
without custom gradients, about 8 MB of graphs kept) leaves them pending until there are
`FEW` of them: the work is done once every few such fits and the memory they hold stays
bounded. A base whose own ops register gradients (hundreds a fit) is released every fit.

The registry is TensorFlow's private `ops._gradient_registry`; where it is missing or
changes shape, nothing is released.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

__all__ = ["snapshot", "release"]

logger = logging.getLogger("finetunekit")

PREFIX = "CustomGradient"

#: The names of the functions Keras' TensorFlow trainer traces (train, test, predict).
KERAS_STEPS = frozenset(
    {"one_step_on_data", "one_step_on_iterator", "multi_step_on_iterator",
     "one_step_on_data_distributed"}
)  # fmt: skip

#: Fewer new and pending entries than this wait for a later release (see above).
FEW = 8

# Entries of our calls that were still in use when their call ended.
_pending: set[str] = set()
# Entries of other functions than Keras' steps, which a release never removes: not
# counted towards `at_least`, or they would make every later fit look again.
_foreign: set[str] = set()
_lock = threading.Lock()


def _registry() -> dict[str, Any]:
    from tensorflow.python.framework import ops as tf_ops

    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else {}


def snapshot() -> set[str]:
    """The names of the custom gradients registered so far."""
    return {name for name in list(_registry()) if name.startswith(PREFIX)}


def release(before: set[str], graphs: set[int] | None = None, *, at_least: int = 1) -> int:
    """Removes the custom gradients registered since `before` whose graphs are done.

    Args:
        before: a `snapshot()` taken before the traces.
        graphs: ids of graphs the caller knows it is done with (and never
            differentiates); None: the finished graphs of Keras' step functions
            that no live function holds.
        at_least: with `graphs=None`, fewer new and pending entries than this are
            left pending, not looked at (e.g. `FEW`).

    Returns:
        How many entries were removed.
    """
    with _lock:
        return _release(before, graphs, at_least)


def _release(before: set[str], graphs: set[int] | None, at_least: int = 1) -> int:
    registry = _registry()
    names = list(registry)
    added = [name for name in names if name.startswith(PREFIX) and name not in before]
    if graphs is None:  # with the ones earlier calls left in use
        _pending.intersection_update(names)
        _foreign.intersection_update(names)
        added += sorted(_pending.difference(added))
        if sum(name not in _foreign for name in added) < at_least:
            _pending.update(added)
            return 0
    if not added:
        return 0
    try:
        live: set[int] = set()
        if graphs is None:
            if gc.get_freeze_count():
                # Frozen objects (gc.freeze, e.g. during another thread's rank_bases) are
                # invisible to gc.get_objects: a live function could be missed. Keep all.
                _pending.update(added)
                return 0
            gc.collect()  # the functions of the call that just ended
            live = _live_graphs()
        removed = 0
        for name in added:
            entry = registry.get(name)
            function = entry.get("type") if isinstance(entry, dict) else None
            reached = _graphs_of(function, 4) if function is not None else []
            if not reached:
                continue
            ids = {id(graph) for graph in reached}
            if graphs is not None:
                done = bool(ids & graphs)
            else:
                keras_step = any(graph.name in KERAS_STEPS for graph in reached)
                if not keras_step:
                    _foreign.add(name)
                done = (
                    keras_step and not ids & live and all(_finished(graph) for graph in reached)
                )
            if done:
                registry.pop(name, None)
                _pending.discard(name)
                removed += 1
            elif graphs is None:
                _pending.add(name)
        if removed:
            logger.debug("released %d custom gradients of finished traces", removed)
        return removed
    except Exception as exc:  # noqa: BLE001 - memory only: never fail the caller's work
        logger.debug("custom gradients kept (%s)", exc)
        return 0


def _graphs_of(function: Any, depth: int) -> list[Any]:
    """The graphs (and their outer graphs) of the tensors a closure holds, `depth` deep."""
    found: list[Any] = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        for item in value if isinstance(value, (list, tuple)) else (value,):
            try:
                graph = getattr(item, "graph", None)
            except Exception:  # noqa: BLE001 - e.g. an eager tensor: it has no graph
                graph = None
            inner = _function_graphs(graph)
            if depth > 1 and callable(item) and not isinstance(item, type):
                inner += _graphs_of(item, depth - 1)
            found.extend(g for g in inner if all(g is not f for f in found))
    return found


def _function_graphs(graph: Any) -> list[Any]:
    """`graph` and the function graphs around it, up to the first plain graph."""
    chain = []
    while graph is not None and hasattr(graph, "structured_outputs"):  # a FuncGraph
        chain.append(graph)
        graph = getattr(graph, "outer_graph", None)
    return chain


def _live_graphs() -> set[int]:
    """Ids of the graphs (and outer graphs) that live functions hold."""
    from tensorflow.python.eager.polymorphic_function.atomic_function import AtomicFunction
    from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction

    # Compared by exact type against the classes and every subclass loaded now: both
    # are ABCs, and `isinstance` against an ABC costs about a microsecond per object,
    # 0.3-0.5 s over the heap after a fit (about 400,000 objects); a set lookup of the
    # type takes a fifth of that.
    types = _subclasses(ConcreteFunction, AtomicFunction)
    live: set[int] = set()
    for obj in gc.get_objects():
        if type(obj) in types:
            live.update(id(graph) for graph in _function_graphs(getattr(obj, "graph", None)))
    return live


def _subclasses(*classes: type) -> frozenset[type]:
    """`classes` and all their subclasses, at any depth."""
    found: set[type] = set()
    stack = list(classes)
    while stack:
        cls = stack.pop()
        if cls not in found:
            found.add(cls)
            stack.extend(cls.__subclasses__())
    return frozenset(found)


def _finished(graph: Any) -> bool:
    """Whether the graph's trace is over (a graph mid-trace has no outputs yet)."""
    # FuncGraph.structured_outputs is None until func_graph_from_py_func has traced it.
    return getattr(graph, "structured_outputs", None) is not None
