"""Conversion: every ReLU (and ReLU6) call site of a model becomes its own ``SupportSite``.

Two ways to find the call sites, one result:

- **torch.fx** (fast path, used whenever ``fx.symbolic_trace`` succeeds): the graph names every call,
  the sites are spliced in as graph nodes. Site names of existing runs come from this path.
- **One recorded forward pass** (fallback, for models fx cannot trace, e.g. a ``forward`` that checks
  ``x.shape`` or branches on data): the same pass Torch-Pruning's DependencyGraph makes. Forward hooks
  count the calls of every ``nn.ReLU``/``nn.ReLU6`` module; a ``TorchFunctionMode`` sees every
  functional call (``F.relu``, ``torch.relu``, ``x.relu()``, the in-place forms, ``F.relu6``) together
  with the module whose ``forward`` made it (a module-call stack kept by pre/post hooks), and dim 1 of
  each input gives the channel count. The model is then rewritten in place, with no symbolic tracing:

  * a module called once becomes a ``SupportSite`` at the same path;
  * a module called k > 1 times becomes a ``SiteRouter`` holding k sites (paths ``relu.0``, ``relu.1``,
    … where fx names them ``relu``, ``relu_1``) that sends the i-th call of each forward to site i;
  * a functional call becomes a site registered on the module that made it (``stem.relu``, suffixed
    ``_1`` … as on the fx path), and a ``TorchFunctionMode`` that is active only while the converted
    model's forward runs (root forward pre-hook / always-called forward hook) sends the i-th functional
    ReLU call of each forward to the i-th recorded site.

  Routing is by call order, so a forward whose ReLU calls depend on the data (a branch taken in one
  pass and not in another) could send a call to the wrong site: every routed call checks its channel
  count, and at the end of each forward every router must have been called exactly as often as
  recorded; otherwise ``TraceError`` says so rather than computing something else. Module sites and
  plain ReLU modules pause the functional routing while they run (their own ``torch.relu`` is theirs).

  torch.export (the ONNX exporter, non-strict) runs the Python forward, mode and hooks included, so the
  routing is captured in the exported graph; tests/test_convert.py checks ONNX parity. torch.compile
  (dynamo) of a model with routed functional sites is not supported: dynamo loses a routed call and
  the end-of-forward check raises. Every fx-traceable model (all torchvision ones) takes the fx path. torch.export
  was considered as the fallback itself and not chosen: it needs symbolic shapes to get past the same
  data-dependent checks, and its graph is not a module Torch-Pruning and our training loop can use.

ReLU6 (MobileNetV2) is converted too, into a site with ``upper=6``: η*(q; β) then min(·, 6). The support
m = [q > β] is the same notion as at a ReLU; a channel whose support is zero outputs zero either way,
so pruning it is exact. Without this, MobileNetV2 would have no site at all. Other activations (GELU,
SiLU, Hardswish, …) pass negative values or have no exact zero region, so they get no support; a model
with none of ReLU/ReLU6 raises ``TraceError`` naming what it found. With ``gate_activations`` they become
channel gates instead (act(q)·keep, no support): a weight criterion prunes at them exactly.

Train and eval modes are both kept. A plain fx trace bakes in the mode the model was traced in
(``F.dropout(x, p, self.training)``, torchvision's stochastic depth, ``if self.training:``); ``_ModeTracer``
reads each traced module's ``training`` when the graph runs, and a graph whose branches on it differ
between the modes is left to the recorded path. The recorded path records one pass in each mode (the
training pass with batch-norm statistics and random state put back) and routes each mode's calls to
its own sites, so ReLU calls made only in training (an auxiliary head) have sites too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from supportprune.errors import SupportpruneError
from supportprune.method.support import SupportSite, support_sites

RELU6_UPPER = 6.0
_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)
_RELU_METHODS = {"relu", "relu_"}
_INPLACE_FUNCTIONS = (F.relu_, torch.relu_, Tensor.relu_)
# Every functional spelling a TorchFunctionMode sees (``x.relu()`` arrives as ``Tensor.relu``).
_ROUTED_FUNCTIONS = frozenset(_RELU_FUNCTIONS + (Tensor.relu, Tensor.relu_, F.relu6))
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6)
# Functional activations named in the error for a model without ReLU.
_OTHER_FUNCTIONS = {
    F.gelu: "F.gelu", F.silu: "F.silu", F.hardswish: "F.hardswish", F.elu: "F.elu", F.leaky_relu: "F.leaky_relu",
    F.mish: "F.mish", F.softplus: "F.softplus", torch.sigmoid: "torch.sigmoid", torch.tanh: "torch.tanh",
}


# Activations that become channel gates act(q)·keep (``gate_activations``): exact to prune, with no support of their
# own. The sigmoids gate a squeeze-excitation's channels, which the block's output multiplies by.
GATED_MODULES = (nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Mish, nn.ELU, nn.LeakyReLU,
                 nn.Softplus, nn.Tanh, nn.SELU, nn.CELU)
GATED_FUNCTIONS = {
    F.silu: "silu", F.gelu: "gelu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.mish: "mish", F.elu: "elu", F.leaky_relu: "leaky_relu", F.softplus: "softplus",
    torch.tanh: "tanh", F.tanh: "tanh", F.selu: "selu", F.celu: "celu",
}


def _gate(func, args: tuple, kwargs: dict):
    """The activation of a functional call as a function of its input alone (its other arguments are constants;
    out of place: the site multiplies by keep anyway), or None when an argument is not a constant."""
    rest, kwargs = args[1:], {k: v for k, v in kwargs.items() if k != "inplace"}
    if any(isinstance(a, (fx.Node, Tensor)) for a in rest + tuple(kwargs.values())):
        return None
    if func in (F.elu, F.leaky_relu, F.celu, F.selu, F.silu, F.hardswish, F.hardsigmoid, F.mish) and rest:
        rest = rest[:1] if func in (F.elu, F.leaky_relu, F.celu) else ()  # drop a positional ``inplace``
    return functools.partial(func, *rest, **kwargs)


class TraceError(SupportpruneError, ValueError):
    """The model cannot be converted (no ReLU call site, or its ReLU calls differ between passes)."""


def convert_relus(model: nn.Module, example_input: Tensor, *, gate_activations: bool = False) -> nn.Module:
    """Give every ReLU/ReLU6 call site of ``model`` its own ``SupportSite``.

    A module called twice (torchvision's BasicBlock calls ``self.relu`` twice) becomes two sites, and
    functional calls (``F.relu`` inside GoogLeNet's BasicConv2d) become sites too. Channel counts are
    read from one forward pass of ``example_input``. The returned module (an fx GraphModule when fx can
    trace the model, else ``model`` itself, rewritten) computes exactly what ``model`` computes (β = 0
    is ReLU), in training and in eval mode alike; state-dict keys of all other layers are unchanged.

    ``gate_activations``: the other activations (``GATED_MODULES``, ``GATED_FUNCTIONS``: SiLU, GELU, Hardswish,
    the sigmoid of a squeeze-excitation, ...) become sites too, as channel gates act(q)·keep with no support:
    what a weight criterion needs to prune a model without ReLU exactly.
    """
    try:
        graph_module = _trace_in_both_modes(model)
    except Exception:  # fx raises many types; the recorded pass handles what fx cannot
        return _convert_recorded(model, example_input, gate_activations)
    modules = dict(graph_module.named_modules())
    relu_nodes = [node for node in graph_module.graph.nodes if _is_relu_call(node, modules)]
    gate_nodes = [node for node in graph_module.graph.nodes if gate_activations and _gate_of(node, modules) is not None]
    if not relu_nodes and not gate_nodes:
        return _convert_recorded(model, example_input, gate_activations)  # raises, naming the activations it finds
    return _convert_traced(graph_module, modules, relu_nodes, gate_nodes, example_input)


def activation_census(model: nn.Module, example_input: Tensor) -> tuple[int, list[str]]:
    """(How many ReLU/ReLU6 calls one eval-mode forward of ``model`` makes, the other activations it calls, by
    name): whether the support criterion has sites to work with. ``model`` is left as it is."""
    recorder = _record_calls(model, example_input)
    return sum(1 for call in recorder.calls if call.gate is None), recorder.other_activations


# --- modes -------------------------------------------------------------------------------------------


class _ModeTracer(fx.Tracer):
    """``fx.symbolic_trace``'s tracer, except that a traced module's ``self.training`` is not a constant: it is read
    from the module when the graph runs, so ``F.dropout(x, p, self.training)`` and torchvision's stochastic depth
    keep following ``train()``/``eval()`` (a plain trace bakes in the mode the model was traced in). Control flow on
    it (``if self.training:``) takes the branch of ``training``, and ``branched`` records that it did."""

    def __init__(self, training: bool) -> None:
        super().__init__()
        self.training, self.branched = training, False
        self._mode_nodes: set[fx.Node] = set()
        self._saved: dict[nn.Module, Any] = {}

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        result = super().create_args_for_root(root_fn, is_module, concrete_args)
        for path, module in self.root.named_modules():
            if path and self.is_leaf_module(module, path):
                continue  # called as one node, never traced into
            self._saved[module] = module.__dict__["training"]
            proxy = self.create_proxy("get_attr", f"{path}.training" if path else "training", (), {})
            self._mode_nodes.add(proxy.node)
            module.__dict__["training"] = proxy
        return result

    def trace(self, root, concrete_args=None) -> fx.Graph:
        try:
            graph = super().trace(root, concrete_args)
        finally:
            for module, value in self._saved.items():
                module.__dict__["training"] = value
        for node in [n for n in graph.nodes if n in self._mode_nodes and not n.users]:
            graph.erase_node(node)
        return graph

    def to_bool(self, obj) -> bool:
        if obj.node in self._mode_nodes:
            self.branched = True
            return self.training
        return super().to_bool(obj)


def _trace_in_both_modes(model: nn.Module) -> fx.GraphModule:
    """The model traced by fx with its train/eval behaviour kept: one graph when the graph does not depend on the
    mode; a ``TraceError`` (then the recorded path, which runs the Python forward in either mode) when branches on
    ``self.training`` give different graphs."""
    name = type(model).__name__
    tracer = _ModeTracer(training=model.training)
    graph_module = fx.GraphModule(model, tracer.trace(model), name)
    if tracer.branched:
        other = _ModeTracer(training=not model.training)
        if fx.GraphModule(model, other.trace(model), name).code != graph_module.code:
            raise TraceError(f"{name} branches on self.training into other layers: fx cannot keep both modes")
    graph_module.train(model.training)
    return graph_module


# --- fx path -----------------------------------------------------------------------------------------


def _is_relu_call(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS or node.target is F.relu6
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def _gate_of(node: fx.Node, modules: dict[str, nn.Module]):
    """The activation of a call that becomes a channel gate (``GATED_MODULES``, ``GATED_FUNCTIONS``), or None."""
    if node.op == "call_module" and isinstance(modules.get(node.target), GATED_MODULES):
        return modules[node.target]
    if node.op == "call_function" and node.target in GATED_FUNCTIONS:
        return _gate(node.target, node.args, node.kwargs)
    return None


def _is_inplace_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the ReLU call wrote into its input (``ReLU(inplace=True)``, ``relu_``, ``inplace=True``)."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_function":
        return node.target in (F.relu_, torch.relu_) or bool(node.kwargs.get("inplace", False)) or (
            node.target in (F.relu, F.relu6) and len(node.args) > 1 and bool(node.args[1]))
    return node.op == "call_method" and node.target == "relu_"


def _node_upper(node: fx.Node, modules: dict[str, nn.Module]) -> float | None:
    if node.op == "call_module":
        return RELU6_UPPER if isinstance(modules.get(node.target), nn.ReLU6) else None
    return RELU6_UPPER if node.op == "call_function" and node.target is F.relu6 else None


def _unique_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _functional_base(owner: str, upper: float | None) -> str:
    leaf = "relu6" if upper is not None else "relu"
    return f"{owner}.{leaf}" if owner else leaf


def _site_name(node: fx.Node, taken: set[str], upper: float | None, gate: str | None = None) -> str:
    """A readable, unique module path for a call site: the ReLU module's path, or the path of the
    module whose forward called F.relu (GoogLeNet's BasicConv2d), suffixed when called repeatedly."""
    if node.op == "call_module":
        return _unique_name(str(node.target), taken)
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    owner = stack[-1].split("@")[0] if stack else ""
    return _unique_name(_functional_base(owner, upper) if gate is None else (f"{owner}.{gate}" if owner else gate), taken)


def _convert_traced(graph_module: fx.GraphModule, modules: dict[str, nn.Module], relu_nodes: list[fx.Node],
                    gate_nodes: list[fx.Node], example_input: Tensor) -> fx.GraphModule:
    channels = _channels_at(graph_module, relu_nodes, gate_nodes, example_input)
    gate_nodes = [node for node in gate_nodes if node in channels]  # a gate without a channel dimension stays
    replaced = relu_nodes + gate_nodes
    reused_targets = {node.target for node in replaced if node.op == "call_module"}
    taken = {name for name in modules if name not in reused_targets}
    replaced_set = set(replaced)
    for node in [n for n in graph_module.graph.nodes if n in replaced_set]:
        if node in relu_nodes:
            upper = _node_upper(node, modules)
            name = _site_name(node, taken, upper)
            site = SupportSite(channels[node], inplace=_is_inplace_relu(node, modules), upper=upper)
        else:
            gate = _gate_of(node, modules)
            name = _site_name(node, taken, None, GATED_FUNCTIONS.get(node.target))
            site = SupportSite(channels[node], gate=gate)
        set_submodule(graph_module, name, site)
        with graph_module.graph.inserting_after(node):
            site_call = graph_module.graph.call_module(name, args=(node.args[0],))
        node.replace_all_uses_with(site_call)
        graph_module.graph.erase_node(node)
    for target in reused_targets:
        if target not in {n.target for n in graph_module.graph.nodes if n.op == "call_module"}:
            _delete_submodule(graph_module, str(target))
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


def _channels_at(graph_module: fx.GraphModule, nodes: list[fx.Node], gates: list[fx.Node],
                 example_input: Tensor) -> dict[fx.Node, int]:
    """Run the traced graph once and read the channel count (dim 1) of each ReLU's input (and each gate's, where
    it has one)."""
    wanted, optional = set(nodes), set(gates)
    channels: dict[fx.Node, int] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            if node in wanted:
                if not isinstance(result, Tensor) or result.dim() < 2:
                    raise TraceError(f"ReLU call site {node.name} has no channel dimension")
                channels[node] = int(result.shape[1])
            elif node in optional and isinstance(result, Tensor) and result.dim() >= 2:
                channels[node] = int(result.shape[1])
            return result

    was_training = graph_module.training
    graph_module.eval()
    with torch.no_grad():
        _Recorder(graph_module).run(example_input)
    graph_module.train(was_training)
    return channels


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, leaf, module)


def _delete_submodule(root: nn.Module, path: str) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    delattr(parent, leaf)


# --- recorded path -----------------------------------------------------------------------------------


@dataclass
class _Call:
    """One activation call of the recorded forward: a module's (``module`` set) or a functional one (``owner``);
    ``gate`` set for a call that becomes a channel gate; ``where``: the modules it was called inside."""

    channels: int
    inplace: bool
    upper: float | None
    module: nn.Module | None = None
    owner: nn.Module | None = None
    gate: Any = None
    name: str | None = None  # a functional gate's base name
    where: tuple = ()

    def key(self) -> tuple:
        """What identifies one call site between the eval-mode and the training-mode pass."""
        return (id(self.module), id(self.owner), self.channels, self.upper, self.gate is None, self.name, self.where)


def _is_inplace_call(func, args: tuple, kwargs: dict) -> bool:
    return func in _INPLACE_FUNCTIONS or bool(kwargs.get("inplace", False)) or (
        func in (F.relu, F.relu6) and len(args) > 1 and bool(args[1]))


def _channels_of(value, where: str) -> int:
    if not isinstance(value, Tensor) or value.dim() < 2:
        raise TraceError(f"ReLU call site {where} has no channel dimension (its input needs shape (N, C, ...))")
    return int(value.shape[1])


def _is_activation_module(module: nn.Module) -> bool:
    return type(module).__module__ == nn.modules.activation.__name__


class _CallRecorder(TorchFunctionMode):
    """Records, in order, every ReLU call of one forward pass with its channel count and caller (and, with
    ``gates``, every call of another activation that has a channel dimension)."""

    def __init__(self, root: nn.Module, gates: bool = False) -> None:
        super().__init__()
        self.names = {module: name for name, module in root.named_modules()}
        self.gates = gates
        self.stack: list[nn.Module] = []
        self.calls: list[_Call] = []
        self.other_activations: list[str] = []

    def _where(self) -> tuple:
        return tuple(id(module) for module in self.stack)

    def pre_hook(self, module: nn.Module, args) -> None:
        where = self._where()
        self.stack.append(module)
        if isinstance(module, _ACTIVATION_MODULES):
            channels = _channels_of(args[0] if args else None, self.names[module] or type(module).__name__)
            upper = RELU6_UPPER if isinstance(module, nn.ReLU6) else None
            self.calls.append(_Call(channels, bool(module.inplace), upper, module=module, where=where))
        elif self.gates and isinstance(module, GATED_MODULES) and args and isinstance(args[0], Tensor) and args[0].dim() >= 2:
            self.calls.append(_Call(int(args[0].shape[1]), False, None, module=module, gate=module, where=where))
        elif _is_activation_module(module):
            self._other(type(module).__name__)

    def post_hook(self, module: nn.Module, args, output) -> None:
        self.stack.pop()

    def _other(self, name: str) -> None:
        if name not in self.other_activations:
            self.other_activations.append(name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inside_activation = bool(self.stack) and _is_activation_module(self.stack[-1])
        owner = self.stack[-1] if self.stack else None
        if func in _ROUTED_FUNCTIONS and not inside_activation:
            where = f"{func.__name__} in {self.names.get(owner) or 'the model'}"
            upper = RELU6_UPPER if func is F.relu6 else None
            self.calls.append(_Call(_channels_of(args[0] if args else None, where), _is_inplace_call(func, args, kwargs),
                                    upper, owner=owner, where=self._where()))
        elif func in GATED_FUNCTIONS and not inside_activation:
            gate = _gate(func, args, kwargs) if self.gates else None
            if gate is not None and isinstance(args[0], Tensor) and args[0].dim() >= 2:
                self.calls.append(_Call(int(args[0].shape[1]), False, None, owner=owner, gate=gate,
                                        name=GATED_FUNCTIONS[func], where=self._where()))
            elif func in _OTHER_FUNCTIONS:
                self._other(_OTHER_FUNCTIONS[func])
        elif func in _OTHER_FUNCTIONS and not inside_activation:
            self._other(_OTHER_FUNCTIONS[func])
        return func(*args, **kwargs)


def _forward_once(model: nn.Module, example_input: Tensor, mode: TorchFunctionMode, handles: list,
                  training: bool = False) -> None:
    """One no-grad forward of ``model`` under ``mode``, in eval mode (or training mode, ``training``: then the
    batch-norm statistics and the random-number state are put back as they were); the hooks ``handles`` are removed
    and the model's mode restored afterwards, whatever happens."""
    was_training = model.training
    model.train(training)
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()] if training else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), mode:
            model(example_input.clone())  # an in-place first ReLU must not change the caller's tensor
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        model.train(was_training)


def _record_calls(model: nn.Module, example_input: Tensor, gates: bool = False, training: bool = False) -> _CallRecorder:
    recorder = _CallRecorder(model, gates)
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook))
        handles.append(module.register_forward_hook(recorder.post_hook, always_call=True))
    try:
        _forward_once(model, example_input, recorder, handles, training)
    except TraceError:
        raise
    except Exception as error:
        mode = " in training mode" if training else ""
        raise TraceError(f"{type(model).__name__} fails on the example input{mode}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from error
    return recorder


def _merge_modes(eval_calls: list[_Call], train_calls: list[_Call]) -> tuple[list[_Call], dict[bool, list[int]]]:
    """One list of call sites for both modes: the calls both passes make (the longest common subsequence of their
    keys), and those only one makes (a training-only auxiliary head). Returns the sites and, per mode (True:
    training), the site of each call of that mode's forward, in order."""
    keys_e, keys_t = [c.key() for c in eval_calls], [c.key() for c in train_calls]
    if keys_e == keys_t:
        order = list(range(len(eval_calls)))
        return eval_calls, {False: order, True: list(order)}
    n, m = len(keys_e), len(keys_t)
    common = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            common[i][j] = (common[i + 1][j + 1] + 1 if keys_e[i] == keys_t[j]
                            else max(common[i + 1][j], common[i][j + 1]))
    merged: list[_Call] = []
    routes: dict[bool, list[int]] = {False: [], True: []}
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and keys_e[i] == keys_t[j]:
            routes[False].append(len(merged))
            routes[True].append(len(merged))
            merged.append(eval_calls[i])
            i, j = i + 1, j + 1
        elif j >= m or (i < n and common[i + 1][j] >= common[i][j + 1]):
            routes[False].append(len(merged))
            merged.append(eval_calls[i])
            i += 1
        else:
            routes[True].append(len(merged))
            merged.append(train_calls[j])
            j += 1
    return merged, routes


def _site_for(call: _Call) -> SupportSite:
    if call.gate is not None:
        return SupportSite(call.channels, gate=call.gate)
    return SupportSite(call.channels, inplace=call.inplace, upper=call.upper)


def _convert_recorded(model: nn.Module, example_input: Tensor, gates: bool = False) -> nn.Module:
    recorder = _record_calls(model, example_input, gates)
    if not recorder.calls:
        found = f"found {', '.join(recorder.other_activations)}; " if recorder.other_activations else ""
        raise TraceError(f"{type(model).__name__} has no ReLU call site to turn into a support ({found}"
                         "supportprune needs ReLU or ReLU6 call sites)")
    trained = _record_calls(model, example_input, gates, training=True)
    calls, routes = _merge_modes(recorder.calls, trained.calls)
    paths_of: dict[nn.Module, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths_of.setdefault(module, []).append(path)
    taken = {path for paths in paths_of.values() for path in paths}

    module_calls: dict[nn.Module, list[int]] = {}
    functional: list[int] = []
    for index, call in enumerate(calls):
        if call.module is not None:
            module_calls.setdefault(call.module, []).append(index)
        else:
            functional.append(index)

    def local_routes(indices: list[int]) -> dict[bool, list[int]]:
        """Per mode, which of these sites each of the mode's calls (among these) goes to."""
        position = {index: k for k, index in enumerate(indices)}
        return {mode: [position[i] for i in order if i in position] for mode, order in routes.items()}

    routers = []
    for module, indices in module_calls.items():
        sites = [_site_for(calls[i]) for i in indices]
        mode_routes = local_routes(indices)
        single = len(sites) == 1 and all(len(r) == 1 for r in mode_routes.values())
        replacement = sites[0] if single else SiteRouter(sites, mode_routes)
        for path in paths_of[module]:
            if path == "":
                raise TraceError(f"{type(model).__name__} is itself a ReLU; wrap it in a model with layers to prune")
            set_submodule(model, path, replacement)
        if not single:
            routers.append(paths_of[module][0])

    functional_paths = []
    for index in functional:
        call = calls[index]
        owner = call.owner if call.owner is not None else model
        owner_path = paths_of[owner][0]
        owner_taken = taken | {f"{owner_path}.{attr}" if owner_path else attr for attr in dir(owner)}
        base = (_functional_base(owner_path, call.upper) if call.gate is None
                else f"{owner_path}.{call.name}" if owner_path else call.name)
        name = _unique_name(base, owner_taken)
        taken.add(name)
        set_submodule(model, name, _site_for(call))
        functional_paths.append(name)

    if routers or functional_paths:
        routed = _ROUTED_FUNCTIONS | (frozenset(GATED_FUNCTIONS) if any(calls[i].gate is not None for i in functional)
                                      else frozenset())
        _CallRouting(model, routers, functional_paths, local_routes(functional), routed).install()
    return model


class SiteRouter(nn.ModuleList):
    """The sites of one activation module called k times per forward: the i-th call goes to site
    ``routes[training][i]`` (site i when both modes make the same calls).

    The count restarts at every forward of the converted model (``_CallRouting``)."""

    def __init__(self, sites: list[nn.Module], routes: dict[bool, list[int]] | None = None) -> None:
        super().__init__(sites)
        self.routes = routes or {mode: list(range(len(sites))) for mode in (False, True)}
        self.calls = 0

    def expected_calls(self) -> int:
        return len(self.routes[self.training])

    def forward(self, q: Tensor) -> Tensor:
        if self.calls >= self.expected_calls():
            raise TraceError(
                f"a ReLU module converted into {len(self)} support sites was called more than {self.expected_calls()} "
                "times in one forward; its calls depend on the data, so convert with an example input that takes the same path")
        site = self[self.routes[self.training][self.calls]]
        self.calls += 1
        return site(q)


class _Pause:
    """Forward pre-hook and always-called hook pair pausing the functional routing inside a module."""

    def __init__(self, routing: "_CallRouting", step: int) -> None:
        self.routing, self.step = routing, step

    def __call__(self, module, *rest) -> None:
        self.routing.paused += self.step


class _CallRouting(TorchFunctionMode):
    """Active during each forward of a converted model: resets the routers' call counts and sends the
    i-th functional ReLU call to the recorded functional site ``routes[training][i]`` (looked up by path at each
    call, so ``export_ready`` may replace a site by ``nn.ReLU``)."""

    def __init__(self, root: nn.Module, routers: list[str], functional: list[str],
                 routes: dict[bool, list[int]] | None = None, routed: frozenset = _ROUTED_FUNCTIONS) -> None:
        super().__init__()
        self.root = root
        self.routers = routers
        self.functional = functional
        self.routes = routes or {mode: list(range(len(functional))) for mode in (False, True)}
        self.routed = routed
        self.calls = 0
        self.paused = 0

    def install(self) -> None:
        self.root._support_call_routing = self
        self.root.register_forward_pre_hook(self._enter)
        self.root.register_forward_hook(self._leave, always_call=True)
        self.pause_activations()

    def pause_activations(self) -> None:
        """Pause the routing inside every site and activation module (their own ``torch.relu`` is not a call
        site of the model); call again after replacing modules."""
        for module in self.root.modules():
            if module is self.root or not isinstance(module, (SupportSite, SiteRouter) + _ACTIVATION_MODULES + GATED_MODULES):
                continue
            if any(isinstance(hook, _Pause) for hook in module._forward_pre_hooks.values()):
                continue
            module.register_forward_pre_hook(_Pause(self, 1))
            module.register_forward_hook(_Pause(self, -1), always_call=True)

    def _expected(self) -> int:
        return len(self.routes[self.root.training])

    def _enter(self, module, args) -> None:
        self.calls, self.paused = 0, 0
        for path in self.routers:
            self.root.get_submodule(path).calls = 0
        self.__enter__()

    def _leave(self, module, args, output) -> None:
        self.__exit__(None, None, None)
        if output is None:  # the forward raised; its own error is the one to see
            return
        counts = [(path, self.root.get_submodule(path)) for path in self.routers]
        wrong = [f"{path} ({router.calls} of {router.expected_calls()})" for path, router in counts
                 if router.calls != router.expected_calls()]
        if self.calls != self._expected():
            wrong.append(f"functional ReLU calls ({self.calls} of {self._expected()})")
        if wrong:
            raise TraceError(f"this forward made other ReLU calls than the recorded one: {', '.join(wrong)}; "
                             "convert with an example input that takes the same path through the model")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused or func not in self.routed:
            return func(*args, **kwargs)
        if func in GATED_FUNCTIONS and (not args or not isinstance(args[0], Tensor) or args[0].dim() < 2):
            return func(*args, **kwargs)  # a gate needs a channel dimension: recorded calls had one
        q = args[0]
        if self.calls >= self._expected():
            raise TraceError(f"this forward made more functional ReLU calls than the {self._expected()} recorded; "
                             "convert with an example input that takes the same path through the model")
        path = self.functional[self.routes[self.root.training][self.calls]]
        self.calls += 1
        site = self.root.get_submodule(path)
        channels = getattr(site, "channels", None)
        if channels is not None and (q.dim() < 2 or q.shape[1] != channels):
            raise TraceError(f"functional ReLU call {self.calls} of this forward has input shape {tuple(q.shape)}, "
                             f"but its recorded site {path} has {channels} channels; the model's ReLU calls depend on "
                             "the data: convert with an example input that takes the same path")
        out = site(q)
        if func not in GATED_FUNCTIONS and _is_inplace_call(func, args, kwargs) and out is not q:
            q.copy_(out)  # a bare ``x.relu_()`` relies on x changing (compiled sites return a new tensor)
            out = q
        return out


def call_routing(model: nn.Module) -> _CallRouting | None:
    """The routing a recorded conversion installed on ``model``, if any."""
    return model.__dict__.get("_support_call_routing")


_VALUE_READS = frozenset({"item", "tolist", "numpy"})  # calls that read values without returning a tensor


class _ReadCounter(TorchFunctionMode):
    """Counts, per watched tensor, the torch calls that read its values outside the support sites' own forwards:
    calls that return a tensor, or a value (``item``); a shape or dtype query (``dim``, ``x.shape``) reads no
    value and does not count. Only tensors in ``watched`` (kept alive there) count: a freed temporary's id can be
    reused by a later tensor."""

    def __init__(self, watched: dict[int, Any]) -> None:
        super().__init__()
        self.watched = watched
        self.closed: set[int] = set()  # tensors an in-place site has overwritten: later reads read the site's output
        self.reads: dict[int, int] = {}
        self.inside_site = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        reads_values = getattr(func, "__name__", "") in _VALUE_READS or any(
            isinstance(leaf, Tensor) for leaf in torch.utils._pytree.tree_leaves(result))
        if not self.inside_site and reads_values:
            for value in torch.utils._pytree.tree_leaves((args, kwargs)):
                if isinstance(value, Tensor) and id(value) in self.watched and id(value) not in self.closed:
                    self.reads[id(value)] = self.reads.get(id(value), 0) + 1
        return result


def recorded_site_producers(model: nn.Module, example_input: Tensor, producer_types: tuple[type, ...]) -> dict[str, str]:
    """For a model converted without torch.fx: per support site, the module (of ``producer_types``) whose output is
    exactly the site's input and whose values nothing else reads, found in one recorded forward pass (by tensor
    identity; any other read of that output, a residual sum say, rules the site out; a shape query does not). What
    torch.fx's graph gives ``dsd.estimate_beta`` on the traced path."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, Tensor]] = {}  # the tensor is kept so that its id is not reused
    site_inputs: dict[str, int] = {}
    counter = _ReadCounter(produced)

    def record_output(module, args, output):
        if isinstance(output, Tensor):
            produced[id(output)] = (names[module], output)

    def enter_site(module, args):
        if args and isinstance(args[0], Tensor):
            site_inputs.setdefault(names[module], id(args[0]))
        counter.inside_site += 1

    def leave_site(module, args, output):
        counter.inside_site -= 1
        if args and output is args[0]:  # an in-place site: its output is the producer's tensor, overwritten
            counter.closed.add(id(output))

    handles = []
    for module in model.modules():
        if isinstance(module, SupportSite):
            handles.append(module.register_forward_pre_hook(enter_site))
            handles.append(module.register_forward_hook(leave_site, always_call=True))
        elif isinstance(module, producer_types):
            handles.append(module.register_forward_hook(record_output))
    _forward_once(model, example_input, counter, handles)
    producers = {}
    for site, tensor_id in site_inputs.items():
        if tensor_id in produced and counter.reads.get(tensor_id, 0) == 0:
            producers[site] = produced[tensor_id][0]
    return producers


def export_ready(model: nn.Module) -> nn.Module:
    """A copy for export where sites that are exactly ReLU (β = 0, nothing pruned) become ``nn.ReLU``
    (``nn.ReLU6`` for clamped sites), so runtimes can fuse them into the preceding convolution."""
    import copy

    ready = copy.deepcopy(model).eval()
    for name, site in list(support_sites(ready)):
        if site.mode == "fixed":
            raise ValueError("export_ready expects sites in threshold or batch mode, not fixed")
        if site.gate is not None:
            site.ungated = bool((site.keep == 1).all())  # no multiplication by ones in the exported graph
        elif bool((site.beta == 0).all()) and bool((site.keep == 1).all()):
            set_submodule(ready, name, nn.ReLU() if site.upper is None else nn.ReLU6())
    if isinstance(ready, fx.GraphModule):
        ready.recompile()
    routing = call_routing(ready)
    if routing is not None:  # a converted model without fx: the new ReLU modules pause its routing too
        routing.pause_activations()
    return ready
