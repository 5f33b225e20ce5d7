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
with none of ReLU/ReLU6 raises ``TraceError`` naming what it found.
"""

from __future__ import annotations

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


class TraceError(SupportpruneError, ValueError):
    """The model cannot be converted (no ReLU call site, or its ReLU calls differ between passes)."""


def convert_relus(model: nn.Module, example_input: Tensor) -> nn.Module:
    """Give every ReLU/ReLU6 call site of ``model`` its own ``SupportSite``.

    A module called twice (torchvision's BasicBlock calls ``self.relu`` twice) becomes two sites, and
    functional calls (``F.relu`` inside GoogLeNet's BasicConv2d) become sites too. Channel counts are
    read from one forward pass of ``example_input``. The returned module (an fx GraphModule when fx can
    trace the model, else ``model`` itself, rewritten) computes exactly what ``model`` computes (β = 0
    is ReLU); state-dict keys of all other layers are unchanged.
    """
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception:  # fx raises many types; the recorded pass handles what fx cannot
        return _convert_recorded(model, example_input)
    modules = dict(graph_module.named_modules())
    relu_nodes = [node for node in graph_module.graph.nodes if _is_relu_call(node, modules)]
    if not relu_nodes:
        return _convert_recorded(model, example_input)  # raises, naming the activations it finds
    return _convert_traced(graph_module, modules, relu_nodes, example_input)


# --- fx path -----------------------------------------------------------------------------------------


def _is_relu_call(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS or node.target is F.relu6
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


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


def _site_name(node: fx.Node, taken: set[str], upper: float | None) -> str:
    """A readable, unique module path for a call site: the ReLU module's path, or the path of the
    module whose forward called F.relu (GoogLeNet's BasicConv2d), suffixed when called repeatedly."""
    if node.op == "call_module":
        return _unique_name(str(node.target), taken)
    stack = list(node.meta.get("nn_module_stack", {}).keys())
    owner = stack[-1].split("@")[0] if stack else ""
    return _unique_name(_functional_base(owner, upper), taken)


def _convert_traced(graph_module: fx.GraphModule, modules: dict[str, nn.Module], relu_nodes: list[fx.Node],
                    example_input: Tensor) -> fx.GraphModule:
    channels = _channels_at(graph_module, relu_nodes, example_input)
    reused_targets = {node.target for node in relu_nodes if node.op == "call_module"}
    taken = {name for name in modules if name not in reused_targets}
    for node in relu_nodes:
        upper = _node_upper(node, modules)
        name = _site_name(node, taken, upper)
        site = SupportSite(channels[node], inplace=_is_inplace_relu(node, modules), upper=upper)
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


def _channels_at(graph_module: fx.GraphModule, nodes: list[fx.Node], example_input: Tensor) -> dict[fx.Node, int]:
    """Run the traced graph once and read the channel count (dim 1) of each ReLU's input."""
    wanted = set(nodes)
    channels: dict[fx.Node, int] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            if node in wanted:
                if not isinstance(result, Tensor) or result.dim() < 2:
                    raise TraceError(f"ReLU call site {node.name} has no channel dimension")
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
    """One ReLU call of the recorded forward: a module's (``module`` set) or a functional one (``owner``)."""

    channels: int
    inplace: bool
    upper: float | None
    module: nn.Module | None = None
    owner: nn.Module | None = None


def _is_inplace_call(func, args: tuple, kwargs: dict) -> bool:
    return func in _INPLACE_FUNCTIONS or bool(kwargs.get("inplace", False)) or (
        func in (F.relu, F.relu6) and len(args) > 1 and bool(args[1]))


def _channels_of(value, where: str) -> int:
    if not isinstance(value, Tensor) or value.dim() < 2:
        raise TraceError(f"ReLU call site {where} has no channel dimension (its input needs shape (N, C, ...))")
    return int(value.shape[1])


class _CallRecorder(TorchFunctionMode):
    """Records, in order, every ReLU call of one forward pass with its channel count and caller."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.names = {module: name for name, module in root.named_modules()}
        self.stack: list[nn.Module] = []
        self.calls: list[_Call] = []
        self.other_activations: list[str] = []

    def pre_hook(self, module: nn.Module, args) -> None:
        self.stack.append(module)
        if isinstance(module, _ACTIVATION_MODULES):
            channels = _channels_of(args[0] if args else None, self.names[module] or type(module).__name__)
            upper = RELU6_UPPER if isinstance(module, nn.ReLU6) else None
            self.calls.append(_Call(channels, bool(module.inplace), upper, module=module))
        elif type(module).__module__ == nn.modules.activation.__name__:
            self._other(type(module).__name__)

    def post_hook(self, module: nn.Module, args, output) -> None:
        self.stack.pop()

    def _other(self, name: str) -> None:
        if name not in self.other_activations:
            self.other_activations.append(name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inside_activation = bool(self.stack) and type(self.stack[-1]).__module__ == nn.modules.activation.__name__
        if func in _ROUTED_FUNCTIONS and not inside_activation:
            owner = self.stack[-1] if self.stack else None
            where = f"{func.__name__} in {self.names.get(owner) or 'the model'}"
            upper = RELU6_UPPER if func is F.relu6 else None
            self.calls.append(_Call(_channels_of(args[0] if args else None, where), _is_inplace_call(func, args, kwargs),
                                    upper, owner=owner))
        elif func in _OTHER_FUNCTIONS and not inside_activation:
            self._other(_OTHER_FUNCTIONS[func])
        return func(*args, **kwargs)


def _forward_once(model: nn.Module, example_input: Tensor, mode: TorchFunctionMode, handles: list) -> None:
    """One eval-mode, no-grad forward of ``model`` under ``mode``; the hooks ``handles`` are removed and the
    training mode restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), mode:
            model(example_input.clone())  # an in-place first ReLU must not change the caller's tensor
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _record_calls(model: nn.Module, example_input: Tensor) -> _CallRecorder:
    recorder = _CallRecorder(model)
    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook))
        handles.append(module.register_forward_hook(recorder.post_hook, always_call=True))
    try:
        _forward_once(model, example_input, recorder, handles)
    except TraceError:
        raise
    except Exception as error:
        raise TraceError(f"{type(model).__name__} fails on the example input: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from error
    return recorder


def _convert_recorded(model: nn.Module, example_input: Tensor) -> nn.Module:
    recorder = _record_calls(model, example_input)
    if not recorder.calls:
        found = f"found {', '.join(recorder.other_activations)}; " if recorder.other_activations else ""
        raise TraceError(f"{type(model).__name__} has no ReLU call site to turn into a support ({found}"
                         "supportprune needs ReLU or ReLU6 call sites)")
    paths_of: dict[nn.Module, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths_of.setdefault(module, []).append(path)
    taken = {path for paths in paths_of.values() for path in paths}

    module_calls: dict[nn.Module, list[_Call]] = {}
    functional: list[_Call] = []
    for call in recorder.calls:
        if call.module is not None:
            module_calls.setdefault(call.module, []).append(call)
        else:
            functional.append(call)

    routers = []
    for module, calls in module_calls.items():
        sites = [SupportSite(c.channels, inplace=c.inplace, upper=c.upper) for c in calls]
        replacement = sites[0] if len(sites) == 1 else SiteRouter(sites)
        for path in paths_of[module]:
            if path == "":
                raise TraceError(f"{type(model).__name__} is itself a ReLU; wrap it in a model with layers to prune")
            set_submodule(model, path, replacement)
        if len(sites) > 1:
            routers.append(paths_of[module][0])

    functional_paths = []
    for call in functional:
        owner = call.owner if call.owner is not None else model
        owner_path = paths_of[owner][0]
        owner_taken = taken | {f"{owner_path}.{attr}" if owner_path else attr for attr in dir(owner)}
        name = _unique_name(_functional_base(owner_path, call.upper), owner_taken)
        taken.add(name)
        set_submodule(model, name, SupportSite(call.channels, inplace=call.inplace, upper=call.upper))
        functional_paths.append(name)

    if routers or functional_paths:
        _CallRouting(model, routers, functional_paths).install()
    return model


class SiteRouter(nn.ModuleList):
    """The sites of one activation module called k times per forward: the i-th call goes to site i.

    The count restarts at every forward of the converted model (``_CallRouting``)."""

    def __init__(self, sites: list[nn.Module]) -> None:
        super().__init__(sites)
        self.calls = 0

    def forward(self, q: Tensor) -> Tensor:
        if self.calls >= len(self):
            raise TraceError(
                f"a ReLU module converted into {len(self)} support sites was called more than {len(self)} times "
                "in one forward; its calls depend on the data, so convert with an example input that takes the same path")
        site = self[self.calls]
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
    i-th functional ReLU call to the i-th recorded functional site (looked up by path at each call, so
    ``export_ready`` may replace a site by ``nn.ReLU``)."""

    def __init__(self, root: nn.Module, routers: list[str], functional: list[str]) -> None:
        super().__init__()
        self.root = root
        self.routers = routers
        self.functional = functional
        self.calls = 0
        self.paused = 0

    def install(self) -> None:
        self.root._support_call_routing = self
        self.root.register_forward_pre_hook(self._enter)
        self.root.register_forward_hook(self._leave, always_call=True)
        self.pause_activations()

    def pause_activations(self) -> None:
        """Pause the routing inside every site and ReLU module (their own ``torch.relu`` is not a call
        site of the model); call again after replacing modules."""
        for module in self.root.modules():
            if module is self.root or not isinstance(module, (SupportSite, SiteRouter) + _ACTIVATION_MODULES):
                continue
            if any(isinstance(hook, _Pause) for hook in module._forward_pre_hooks.values()):
                continue
            module.register_forward_pre_hook(_Pause(self, 1))
            module.register_forward_hook(_Pause(self, -1), always_call=True)

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
        wrong = [f"{path} ({router.calls} of {len(router)})" for path, router in counts if router.calls != len(router)]
        if self.calls != len(self.functional):
            wrong.append(f"functional ReLU calls ({self.calls} of {len(self.functional)})")
        if wrong:
            raise TraceError(f"this forward made other ReLU calls than the recorded one: {', '.join(wrong)}; "
                             "convert with an example input that takes the same path through the model")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused or func not in _ROUTED_FUNCTIONS:
            return func(*args, **kwargs)
        q = args[0]
        if self.calls >= len(self.functional):
            raise TraceError(f"this forward made more functional ReLU calls than the {len(self.functional)} recorded; "
                             "convert with an example input that takes the same path through the model")
        path = self.functional[self.calls]
        self.calls += 1
        site = self.root.get_submodule(path)
        channels = getattr(site, "channels", None)
        if channels is not None and (q.dim() < 2 or q.shape[1] != channels):
            raise TraceError(f"functional ReLU call {self.calls} of this forward has input shape {tuple(q.shape)}, "
                             f"but its recorded site {path} has {channels} channels; the model's ReLU calls depend on "
                             "the data: convert with an example input that takes the same path")
        out = site(q)
        if _is_inplace_call(func, args, kwargs) and out is not q:
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
        if bool((site.beta == 0).all()) and bool((site.keep == 1).all()):
            set_submodule(ready, name, nn.ReLU() if site.upper is None else nn.ReLU6())
    if isinstance(ready, fx.GraphModule):
        ready.recompile()
    routing = call_routing(ready)
    if routing is not None:  # a converted model without fx: the new ReLU modules pause its routing too
        routing.pause_activations()
    return ready
