"""Any torch ``forward`` as a description: capture it with torch.fx and lift it to the walk's items.

A model with its own ``forward`` (not an ``nn.Sequential``, no ``kernel_layers()``, not a registered
module) is traced symbolically by :func:`torch.fx.Tracer` -- nothing runs, so the model may live on
the ``meta`` device -- treating every registered module type (:func:`~ntkit.infinite.ops.registry.lookup`),
every plain ``nn.Sequential``, every module with ``kernel_layers()`` and every torch module as a leaf,
and inlining the other custom modules (an ``nn.Sequential`` subclass with its own forward included).
The graph is then *lifted* to the ``(name, module)`` items the walk (:mod:`ntkit.infinite.walk`)
already understands:

* a call of a leaf module is that module (a Sequential is opened, its custom children captured too);
* the functional forms (``F.relu``, ``torch.tanh``, ``F.avg_pool2d``, ``torch.flatten(x, 1)``,
  ``x.mean((2, 3))``, ...) are their modules (:mod:`ntkit.infinite.capture_vocabulary`); ``x.contiguous()``
  and dropout in eval mode are the identity;
* activations, constant factors and sums, differences or products of values that are all pointwise
  functions of one value ``u`` (``u + relu(u)``, ``relu(u) - 0.3 * tanh(u)``, ``relu(u) * tanh(u)``,
  ``relu(2 * u)``, ``relu(u) + relu(relu(u))``) are one activation ``ntkit.nn.Activation(g)`` of ``u``
  (:mod:`ntkit.infinite.capture_pointwise`; ``u`` must be Gaussian: a weight layer's output, or the data);
* ``x + c * f(x)`` (also ``f(x) + x``, ``x - f(x)``, ``f(x) / c``, ``torch.add(x, f, alpha=c)``), ``f`` the
  chain from ``x`` to the other operand ending with a weight layer, is
  ``ntkit.nn.Residual(nn.Sequential(*f), scale=c)``: ``K' = K_x + c^2 K_f``;
* a series-parallel merge ``a + b``, ``torch.cat([a, b, ...], 1)`` or ``a * b`` of branches from a common
  value ``h`` (the *fork*) that share no node is ``ntkit.nn.Parallel(f_a, f_b, ..., merge="sum" |
  "concat" | "prod")`` of ``h``, ``f_a`` the chain from ``h`` to ``a`` (the identity for ``h`` itself;
  merges nest); the op checks the limit's conditions (independent branches, a weight layer after a
  concatenation).

Everything else -- a graph that is not series-parallel, dependent terms that are not pointwise (pooling, a
layer norm or a reshape on one side), differences or scaled sums of independent branches, concatenation
along another axis, stacking, max pooling, a constant scaling of a weight layer's output, parameters used
directly, data-dependent control flow -- is an :class:`~ntkit.infinite.errors.ArchitectureError` naming the
graph node, its target and the source line of the forward, never a silently different kernel. Each graph
value is a *link* ``value = items(prev)`` (:mod:`ntkit.infinite.capture_links`): exactly its chain of items
from the input.
"""

from __future__ import annotations

import inspect
import operator
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ntkit.infinite.capture_links import Link, between, computed, fork_of, reaches, sequential_of, shared_node
from ntkit.infinite.capture_messages import frame as _frame
from ntkit.infinite.capture_messages import target as _target
from ntkit.infinite.capture_messages import where as _where
from ntkit.infinite.capture_pointwise import PointwiseForms, pointwise_module
from ntkit.infinite.capture_vocabulary import (
    ACTIVATIONS,
    ADDS,
    CATS,
    DIVS,
    DROPOUTS,
    GLOBAL_AXES,
    INPLACE,
    MAX_POOLS,
    METHOD_ACTIVATIONS,
    MULS,
    POOLS,
    STACKS,
    SUBS,
    SUPPORTED_FORWARD,
)
from ntkit.infinite.errors import ArchitectureError
from ntkit.infinite.ops.registry import PASS_THROUGH, Item, block_has_weights, lookup
from ntkit.infinite.ops.spatial_mean import SpatialMean, SpatialSum
from ntkit.nn.aggregate import Aggregate
from ntkit.nn.branches import Parallel
from ntkit.nn.structure import Residual as ResidualModule

_FX_ASSERTS = (torch._assert, fx._symbolic_trace._assert_is_none)

def _layers(module: nn.Module) -> bool:
    return callable(getattr(module, "kernel_layers", None))


def _sequential(module: nn.Module) -> bool:
    """An ``nn.Sequential`` that runs its children in order (a subclass with its own forward is captured)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _opened(module: nn.Module) -> bool:
    """Containers opened into their children rather than traced."""
    return _sequential(module) or _layers(module)


def needs_capture(module: nn.Module) -> bool:
    """Whether ``module`` is described by tracing its ``forward``: a custom forward that is neither a
    container the walk opens, nor a registered or pass-through module, nor a torch module."""
    if _layers(module) or lookup(module) is not None or isinstance(module, PASS_THROUGH):
        return False
    if isinstance(module, nn.Sequential):
        return not _sequential(module)
    return (not type(module).__module__.startswith(("torch.nn", "torch.ao.nn", "torch.jit"))
            and getattr(type(module), "forward", nn.Module.forward) is not nn.Module.forward)


def expand(module: nn.Module, name: str) -> Iterator[Item]:
    """The walk's items of ``module``, as :func:`~ntkit.infinite.ops.registry.leaves` opens containers, with
    every module that :func:`needs_capture` replaced by the items of its captured forward (:func:`capture`)."""
    if needs_capture(module):
        yield from capture(module, name)
    elif _sequential(module):
        for child, sub in module._modules.items():  # not named_children(): it skips a module used twice
            if sub is not None:
                yield from expand(sub, f"{name}.{child}" if name else child)
    elif _layers(module):
        for child, sub in module.kernel_layers():  # type: ignore[operator]
            yield from expand(sub, f"{name}.{child}" if name else child)
    else:
        yield name or "model", module


class _Tracer(fx.Tracer):
    """Keeps registered, pass-through, opened and torch modules as calls; inlines custom modules."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (_opened(m) or lookup(m) is not None or isinstance(m, PASS_THROUGH)
                or super().is_leaf_module(m, module_qualified_name))


def _trace(module: nn.Module, label: str) -> fx.Graph:
    """The fx graph of ``module.forward``, its parameters after the first fixed to their defaults."""
    params = list(inspect.signature(module.forward).parameters.values())
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    graph = params[1:2] if len(params) > 1 and params[1].kind == params[1].POSITIONAL_OR_KEYWORD and any(
        isinstance(m, Aggregate) for m in module.modules()) else []  # forward(x, adjacency) of a graph network
    concrete = {p.name: p.default for p in params[1:] if p.kind not in variadic and not (p in graph and
                                                                                       p.default is p.empty)}
    if not params or params[0].kind in (*variadic, params[0].KEYWORD_ONLY) or params[0].default is not params[0].empty \
            or any(v is inspect.Parameter.empty for v in concrete.values()):
        raise ArchitectureError(
            f"infinite_kernel: {label}: expected a forward of one tensor input, or of node features and an adjacency "
            f"(other parameters with defaults), got forward({', '.join(p.name for p in params)})")
    try:
        return _Tracer().trace(module, concrete_args=concrete or None)
    except Exception as err:  # any failure of symbolic tracing is the model's: reported with its line
        where = _frame([(f.filename, str(f.lineno), f.name, f.line or "")
                        for f in traceback.extract_tb(err.__traceback__)])
        if isinstance(err, fx.proxy.TraceError) and "control flow" in str(err):
            raise ArchitectureError(
                f"infinite_kernel: {label}: the forward has data-dependent control flow (a Python condition on a "
                f"traced tensor, its values or its shape): its architecture depends on the input and has no "
                f"kernel; at {where}. Supported in a forward: {SUPPORTED_FORWARD}") from None
        raise ArchitectureError(f"infinite_kernel: {label}: the forward cannot be traced symbolically "
                                f"({type(err).__name__}: {err}); at {where}") from None


def _number(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def capture(module: nn.Module, name: str) -> list[Item]:
    """The items of ``module``'s traced forward (names prefixed by ``name``); see the module docstring.

    Raises
    ------
    ArchitectureError
        A forward with data-dependent control flow, or a node that is not a chain step, a residual
        sum or a series-parallel merge (its name, target and source line in the message).
    """
    label = f"the forward of {name or 'model'} ({type(module).__name__})"
    return _Lifter(module, name, label).run(_trace(module, label))


class _Lifter:
    """Lifts one traced graph to items (see :func:`capture`)."""

    def __init__(self, root: nn.Module, prefix: str, label: str) -> None:
        self.root, self.prefix, self.label = root, prefix, label
        self.links: dict[fx.Node, Link] = {}
        self.batch: set[fx.Node] = set()  # nodes holding x.size(0) / x.shape[0]
        self.shapes: set[fx.Node] = set()  # nodes holding x.shape / x.size()
        self.ignored: set[fx.Node] = set()  # forward parameters fixed to their defaults, and fx's checks of them
        self.forms = PointwiseForms(self.qual)  # values that are one pointwise function of an earlier one

    def error(self, node: fx.Node, what: str) -> ArchitectureError:
        return ArchitectureError(
            f"infinite_kernel: {self.label}: node {node.name} ({_target(node)}): {what}; at {_where(node)}. "
            f"Supported in a forward: {SUPPORTED_FORWARD}")

    def qual(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def run(self, graph: fx.Graph) -> list[Item]:
        out: Link | None = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if self.links:
                    self.ignored.add(node)
                else:
                    self.links[node] = Link(node, None)
            elif node.op == "output":
                out = self.tensor(node, node.args[0])
            elif node.op == "get_attr":
                raise self.error(node, "a parameter or buffer used directly in the forward has no kernel transform; "
                                 "use a weight layer (ntkit.nn.Linear / Conv1d / Conv2d)")
            else:
                self.step(node)
        assert out is not None
        items: list[Item] = []
        link: Link | None = self.unscaled(out)
        while link is not None:
            items[:0] = link.items
            link = link.prev
        return items

    def tensor(self, node: fx.Node, arg: Any) -> Link:
        """The link of the tensor ``arg`` of ``node`` (a value of the chain)."""
        if isinstance(arg, fx.Node) and arg in self.links:
            return self.links[arg]
        raise self.error(node, f"expected a tensor computed from the input, got {arg!r} (a tuple, a constant or a "
                         "value the forward computes otherwise)")

    def unscaled(self, link: Link) -> Link:
        """``link``, which a step other than a sum takes: no pending scale (``c g(x)`` for a pointwise ``g``: one
        activation of ``x``)."""
        if link.scale is None:
            return link
        folded = self.forms.fold(link)
        if folded is None:
            raise self.error(link.node, f"multiplication by the constant {link.scale} outside a residual sum "
                             "x + c * f(x) or a pointwise function of a value is not yet supported")
        self.links[link.node] = folded
        return folded

    def taken(self, node: fx.Node, arg: Any, module: nn.Module | None) -> Link | None:
        """The input link of ``node = module(arg)``; None where ``arg = c x`` and ``module`` is pointwise: ``node``
        is then lifted to one activation of ``x``'s base."""
        link = self.tensor(node, arg)
        if link.scale is not None and self.forms.step(module) is not None:
            self.links[node] = self.forms.apply(node, link, module)
            return None
        return self.unscaled(link)

    def chain(self, node: fx.Node, arg: Any, module: nn.Module | None) -> None:
        """``node = module(arg)`` (None: the identity)."""
        link = self.taken(node, arg, module)
        if link is not None:
            self.links[node] = Link(node, link, () if module is None else ((self.qual(node.name), module),))

    def step(self, node: fx.Node) -> None:
        args, kwargs = node.args, node.kwargs
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, fx.Node)]
        if node.op == "call_function" and (node.target in _FX_ASSERTS or (inputs and all(a in self.ignored
                                                                                        for a in inputs))):
            self.ignored.add(node)
            return
        if node.op == "call_module":
            self.call_module(node)
            return
        target, method = node.target, node.op == "call_method"
        name = str(target) if method else ""
        inplace = method and name.endswith("_") and not name.endswith("__")
        if inplace or kwargs.get("inplace") is True or target in INPLACE:
            self.check_inplace(node)
        base = name[:-1] if inplace else name
        if target in ADDS or target in SUBS or base in ("add", "sub"):
            self.residual(node, subtract=target in SUBS or base == "sub")
        elif target in MULS or target in DIVS or target in (operator.neg, torch.neg) or base in ("mul", "div",
                                                                                                  "neg"):
            self.scale(node, divide=target in DIVS or base == "div")
        elif target in CATS:
            self.concat(node)
        elif target in STACKS:
            raise self.error(node, "stacking branches along a new axis has no kernel transform; concatenate them "
                             "along the channels (torch.cat([a, b], 1))")
        elif target in MAX_POOLS or base.startswith("max_pool"):
            raise self.error(node, "max pooling has no closed-form Gaussian kernel; use F.avg_pool1d/2d")
        elif target is getattr and len(args) == 2 and args[1] == "shape":
            self.tensor(node, args[0])
            self.shapes.add(node)
        elif base == "size" and len(args) + len(kwargs) <= 2:
            self.tensor(node, args[0])
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            (self.batch if dim == 0 else self.shapes).add(node)
        elif target is operator.getitem and args[0] in self.shapes and args[1] == 0:
            self.batch.add(node)
        elif base in ("view", "reshape") or target is torch.reshape:
            self.view(node)
        else:
            self.unary(node, target, base)

    def unary(self, node: fx.Node, target: Any, base: str) -> None:
        """A step of one tensor input and constant arguments: an activation, a pooling, a reshaping."""
        args, kwargs = node.args, node.kwargs
        others = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, fx.Node)]
        if others:
            raise self.error(node, "expected constant arguments besides the input tensor, got "
                             + ", ".join(a.name for a in others))
        if target in ACTIVATIONS or base in METHOD_ACTIVATIONS:
            factory = ACTIVATIONS[target] if target in ACTIVATIONS else METHOD_ACTIVATIONS[base]
            self.chain(node, args[0] if args else kwargs.get("input"), self.build(node, factory))
        elif target in POOLS:
            self.chain(node, args[0], self.build(node, POOLS[target]))
            size = args[1] if len(args) > 1 else kwargs.get("output_size")
            if target in GLOBAL_AXES and size in (1, (1,), (1, 1), [1], [1, 1]):
                link = self.links[node]
                self.links[node] = Link(node, link.prev, link.items, pooled=GLOBAL_AXES[target])
        elif target is torch.flatten or base == "flatten":
            start, end = self.bind(node, lambda input, start_dim=0, end_dim=-1: (start_dim, end_dim))
            self.flatten(node, bool(start == 1 and end == -1))
        elif target is torch.mean or base == "mean":
            self.mean(node)
        elif target is torch.sum or base == "sum":
            self.mean(node, total=True)
        elif target in DROPOUTS:
            p, training = self.bind(node, (lambda input, p, train: (p, train)) if target is torch.dropout else
                                    lambda input, p=0.5, training=True, inplace=False: (p, training))
            if training and p != 0:
                raise self.error(node, "dropout is random in training mode; call model.eval() first")
            self.chain(node, args[0], None)
        elif base == "contiguous":  # the identity
            self.chain(node, args[0], None)
        else:
            raise self.error(node, "this operation has no infinite-width kernel transform yet")

    def bind(self, node: fx.Node, signature: Callable[..., Any]) -> Any:
        """``signature(*node.args, **node.kwargs)``: the call's arguments read by a lambda of its signature."""
        try:
            return signature(*node.args, **node.kwargs)
        except TypeError as err:
            raise self.error(node, f"unexpected arguments ({err})") from None

    def build(self, node: fx.Node, factory: Callable[..., nn.Module]) -> nn.Module:
        """The module of a functional call, from its arguments after the input (``inplace`` dropped: the
        lifted module may run on the data before the first weight layer)."""
        try:
            sig = inspect.signature(factory)
            bound = sig.bind(*node.args[1:], **{k: v for k, v in node.kwargs.items() if k != "input"})
            if "inplace" in bound.arguments:
                bound.arguments["inplace"] = False
            return factory(*bound.args, **bound.kwargs)
        except (TypeError, ValueError) as err:
            raise self.error(node, f"unexpected arguments for {getattr(factory, '__name__', 'its module')} "
                             f"({err})") from None

    def check_inplace(self, node: fx.Node) -> None:
        """An in-place step mutates its input: that input must not be used elsewhere (fx records the
        step, not the mutation)."""
        arg = node.args[0] if node.args else node.kwargs.get("input")
        if isinstance(arg, fx.Node) and len(arg.users) > 1:
            raise self.error(node, f"an in-place operation on node {arg.name}, which is also used elsewhere: use the "
                             "out-of-place form")

    def call_module(self, node: fx.Node) -> None:
        qual = str(node.target)
        module = self.root.get_submodule(qual)
        graph = [*node.args[1:], *node.kwargs.values()] if isinstance(module, Aggregate) else []  # (x, adjacency)
        if graph and not (len(graph) == 1 and isinstance(graph[0], fx.Node) and graph[0].op == "placeholder"
                          and graph[0] not in self.links):
            raise self.error(node, "expected the forward's adjacency input itself as the graph of an aggregation")
        if len(node.args) + len(node.kwargs) != 1 + len(graph) or (node.kwargs and not graph):
            raise self.error(node, f"expected a module call on one tensor, got {len(node.args)} arguments and "
                             f"keywords {sorted(node.kwargs)}")
        if getattr(module, "inplace", False) is True:
            self.check_inplace(node)
        link = self.taken(node, node.args[0], module)
        items = tuple(expand(module, self.qual(qual))) if _opened(module) else ((self.qual(qual), module),)
        self.links[node] = self.links[node] if link is None else Link(node, link, items)

    def scale(self, node: fx.Node, divide: bool) -> None:
        """``c * value``, ``value / c``, ``-value``: a scale pending until a residual sum takes it."""
        args = list(node.args)
        args += [-1.0] if len(args) == 1 else []  # a negation
        tensors = [a for a in args if isinstance(a, fx.Node)]
        numbers = [a for a in args if _number(a)]
        if not node.kwargs and len(args) == 2 and len(tensors) == 2 and not divide:  # a product of branches
            links = [self.tensor(node, t) for t in tensors]
            merged = self.forms.merge(node, [(link, 1.0) for link in links], "prod")  # of one base: an activation
            if merged is None:
                self.merge(node, links, "prod")
            else:
                self.links[node] = merged
            return
        if node.kwargs or len(args) != 2 or len(tensors) != 1 or len(numbers) != 1 or (divide and
                                                                                     args[0] is not tensors[0]):
            what = ("between two tensors (a quotient of branches)" if len(tensors) == 2 else
                    "by a factor that is not a Python number")
            raise self.error(node, f"{_target(node)} {what} is not yet supported; only x + c * f(x) with a Python "
                             "number c, and products of branches a * b")
        link = self.tensor(node, tensors[0])
        c = float(numbers[0])  # type: ignore[arg-type]
        if divide:
            if c == 0.0:
                raise self.error(node, "division by zero")
            c = 1.0 / c
        if link.scale is not None:  # c2 * (c1 * f): one pending scale
            self.links[node] = Link(node, link.prev, link.items, scale=link.scale * c, inner=computed(link))
        else:
            self.links[node] = Link(node, link, (), scale=c)

    def residual(self, node: fx.Node, subtract: bool) -> None:
        """``x + c * f(x)``: one operand an earlier value ``x``, the other its chain ``f`` (then a scale)."""
        args = list(node.args)
        alpha = node.kwargs.get("alpha", 1)
        if len(args) != 2 or set(node.kwargs) - {"alpha"} or not _number(alpha):
            raise self.error(node, "expected a sum of two tensors")
        if not all(isinstance(a, fx.Node) and a in self.links for a in args):
            raise self.error(node, "adding a constant (or a value not computed from the input) has no kernel "
                             "transform yet; only x + c * f(x)")
        a, b = (self.links[arg] for arg in args if isinstance(arg, fx.Node))
        factor = float(alpha) * (-1.0 if subtract else 1.0)  # type: ignore[arg-type]
        merged = self.forms.merge(node, [(a, 1.0), (b, factor)], "sum")  # a + c b of one base: one activation
        if merged is not None:
            self.links[node] = merged
            return
        if reaches(b, a):
            anc, cont = a, b
        elif reaches(a, b) and not subtract and alpha == 1:
            anc, cont, factor = b, a, 1.0
        elif factor == 1.0 and a.scale is None and b.scale is None:
            self.merge(node, [a, b], "sum")
            return
        else:
            raise self.error(node, "a difference or a scaled sum of two branches (neither is the input of the other's "
                             "chain) is not yet supported; only x + c * f(x) and plain sums of branches a + b")
        self.unscaled(anc)
        start = cont
        if cont.scale is not None:
            factor *= cont.scale
            start = cont.prev  # type: ignore[assignment]
        block, covers = between(start, anc)
        if not block_has_weights(block):
            odd = next((f"{name} ({type(m).__name__})" for name, m in block if not pointwise_module(m)), "a step")
            raise self.error(node, f"a sum x + f(x) of dependent terms: f has no weight layer and {odd} in it is not "
                             "pointwise (an activation, a constant factor, dropout in eval mode), so the sum is no "
                             "function of one Gaussian value; no closed form here")
        res = ResidualModule(sequential_of(block), scale=factor)
        self.links[node] = Link(node, anc, ((self.qual(node.name), res),), inner=covers | computed(cont))

    def concat(self, node: fx.Node) -> None:
        """``torch.cat([a, b, ...], dim)``: a merge of branches along ``dim`` (the channels; the op checks it)."""
        tensors, dim = self.bind(node, lambda tensors, dim=0, axis=None, out=None: (tensors, dim if axis is None
                                                                                   else axis))
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise self.error(node, f"expected a list of tensors, got {tensors!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise self.error(node, f"expected a concatenation along the channels (dim=1), got dim={dim!r}")
        links = [self.tensor(node, t) for t in tensors]
        if len(links) == 1:
            self.chain(node, tensors[0], None)
        else:
            self.merge(node, links, "concat", dim)

    def merge(self, node: fx.Node, operands: list[Link], rule: str, dim: int = 1) -> None:
        """``node = merge(operands)``: ``Parallel`` of the chains from the operands' fork to each operand."""
        operands = [self.unscaled(link) for link in operands]
        fork = fork_of(operands)
        paths = [between(link, fork) for link in operands]
        shared = shared_node([covers for _, covers in paths])
        if shared is not None:
            raise self.error(node, f"node {shared[0].name} ({_target(shared[0])}) is computed in two of the merged "
                             f"branches (operands {shared[1]} and {shared[2]} from their fork {fork.node.name}): the "
                             "graph is not series-parallel; not supported")
        branches = [sequential_of(items) if items else nn.Identity() for items, _ in paths]
        merged = Parallel(*branches, merge=rule, dim=dim)
        merged.traced_at = _where(node)  # the op's errors (dependent branches, shapes) name the line
        inner = frozenset().union(*(covers for _, covers in paths))
        self.links[node] = Link(node, fork, ((self.qual(node.name), merged),), inner=inner)

    def flatten(self, node: fx.Node, ok: bool) -> None:
        """``(N, C, *S) -> (N, C |S|)``; after an adaptive average pooling to size 1, a spatial mean."""
        if not ok:
            raise self.error(node, "expected a flatten of every axis after the batch (torch.flatten(x, 1), "
                             "x.view(x.size(0), -1))")
        link = self.tensor(node, node.args[0] if node.args else node.kwargs.get("input"))
        if link.pooled is not None and link.scale is None and len(link.node.users) == 1:
            self.links[node] = Link(node, link.prev, ((self.qual(link.node.name), SpatialMean(link.pooled)),),
                                    inner=computed(link))
        else:
            self.chain(node, link.node, nn.Flatten())

    def view(self, node: fx.Node) -> None:
        args = list(node.args[1:]) or list(node.kwargs.values())[:1]
        shape = list(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        self.flatten(node, len(shape) == 2 and shape[0] in self.batch and bool(shape[1] == -1))

    def mean(self, node: fx.Node, total: bool = False) -> None:
        """``x.mean(dims)`` (``x.sum(dims)`` if ``total``) over the spatial axes, or the token axes of tokens
        (checked against the input's rank and layout by the op)."""
        dim, keepdim = self.bind(node, lambda input, dim=None, keepdim=False, dtype=None: (dim, keepdim))
        dims = (dim,) if isinstance(dim, int) else dim
        if keepdim or not isinstance(dims, (tuple, list)) or not dims or not all(isinstance(d, int) for d in dims):
            raise self.error(node, f"expected a {'sum' if total else 'mean'} over the spatial axes (x.mean((2, 3)); "
                             f"x.mean(dim=1) for tokens (N, L, C)), keepdim=False), got dim={dim!r}, "
                             f"keepdim={keepdim!r}")
        module = SpatialSum(dims) if total else SpatialMean(dims)
        self.chain(node, node.args[0] if node.args else node.kwargs.get("input"), module)
