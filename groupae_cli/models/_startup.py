"""Import e3nn without what groupae never uses from it: torch._dynamo and sympy (start-up time).

* At import time e3nn decorates one function (building Wigner matrices) with
  `torch.compiler.disable`, and that decorator imports torch._dynamo (about 1.3 s). The decorator
  only matters when a model is run under `torch.compile`, which groupae never does. So while e3nn
  is imported the decorator is the identity, and torch's own is put back at once.
* `e3nn.o3` imports sympy (about 0.7 s) for one module, `_angular_spherical_harmonics`, which uses
  it only in two functions that build Legendre polynomials symbolically (groupae's models never
  call them). While e3nn is imported, `sympy` is a stand-in holding the names that module takes
  from it; those two functions then import the real sympy the first time they are called. If
  e3nn's imports are not what this expects, e3nn is imported again the plain way.

Where torch._dynamo, sympy or e3nn is loaded already, the corresponding step changes nothing.

Building a model is made cheaper too. e3nn normalises each activation by its second moment over
a million seeded normal samples, computed afresh for every module (a dozen times per model, the
same three functions): the value, a pure function of the activation, is computed once per
process, and for the three activations groupae's models use it is known beforehand
(`KNOWN_MOMENTS`, checked against e3nn's own computation by the tests). While a model is built,
the Python code of e3nn's fx graphs is written once, when the model is complete (`lazy_graph_code`),
not again after every edit of a graph (e3nn's code generator, its einsum optimisation and
`prune_unused_einsums` each rewrite it). And while a model is built for inference (`quick_build`),
e3nn does not search einsum contraction orders for its generated code: torch's einsum orders its
contractions when called, and the search costs about half a second per model.

And every model runs without the products e3nn computes and throws away (`prune_unused_einsums`),
its message-passing layers taking their tensor products' output in pieces (`output_in_pieces`).
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch

_SYMPY_MODULE = "e3nn.o3._angular_spherical_harmonics"
_SYMPY_NAMES = ("Integer", "Poly", "diff", "factorial", "pi", "sqrt", "symbols")
_SYMPY_USERS = ("_poly_legendre", "_sympy_legendre")


def _identity(fn=None, recursive=True, **kwargs):
    return fn if fn is not None else (lambda f: f)


def _lazy_sympy(module: types.ModuleType) -> None:
    """Make the functions of `module` that use sympy import it on their first call."""

    def bind_real_sympy() -> None:
        import sympy

        for name in _SYMPY_NAMES:
            setattr(module, name, getattr(sympy, name))

    for function_name in _SYMPY_USERS:
        original = getattr(module, function_name)

        def lazy(*args, _original=original, **kwargs):
            bind_real_sympy()
            return _original(*args, **kwargs)

        setattr(module, function_name, lazy)


#: e3nn's second moments (`e3nn.math.moment(f, 2)`, float64, on the CPU) of the activations of
#: groupae's models, as e3nn computes them (a million normal samples from a generator seeded 0):
#: the tests check each against that computation, to the bit
KNOWN_MOMENTS = {"silu": "0x1.6b2ae89a364e7p-2", "tanh": "0x1.9326db187cdf7p-2", "sigmoid": "0x1.2c43d4761ee87p-2"}


def known_moments() -> dict:
    """`KNOWN_MOMENTS` as the memo of `_memoise_moments` holds them."""
    functions = {"silu": torch.nn.functional.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    return {(functions[name], 2, torch.float64, "cpu"): torch.tensor(float.fromhex(value), dtype=torch.float64)
            for name, value in KNOWN_MOMENTS.items()}


#: e3nn's moments by (function, n, dtype, device), computed at most once per process
_MOMENTS: dict = known_moments()


def _memoise_moments() -> None:
    """e3nn's activation moments, computed once per (function, n, dtype, device), and not at all for
    `KNOWN_MOMENTS`. e3nn's own computation stays at hand as `moment.computed`."""
    from e3nn.math import _normalize_activation as normalize
    from e3nn.util.default_type import explicit_default_types

    if getattr(normalize.moment, "_groupae_memo", False):
        return

    def moment(f, n, dtype=None, device=None):
        dtype, device = explicit_default_types(dtype, device)  # as e3nn resolves them
        try:
            key = (f, n, dtype, str(device))
            hash(key)
        except TypeError:  # an unhashable callable: not remembered
            return moment.computed(f, n, dtype, device)
        if key not in _MOMENTS:
            _MOMENTS[key] = moment.computed(f, n, dtype, device)
        return _MOMENTS[key].clone()

    moment._groupae_memo = True
    moment.computed = normalize.moment
    normalize.moment = moment


@contextlib.contextmanager
def lazy_graph_code():
    """Build e3nn modules whose fx graphs write their Python code when first called, not at every
    edit (then `write_graph_code`): the same code, written once instead of two to four times."""
    from torch import fx
    from torch.fx._lazy_graph_module import _LazyGraphModule

    original = fx.GraphModule
    fx.GraphModule = _LazyGraphModule
    try:
        yield
    finally:
        fx.GraphModule = original


def write_graph_code(module: torch.nn.Module) -> None:
    """Write now the code of every fx graph of `module` built under `lazy_graph_code` (otherwise
    written at its first call)."""
    from torch.fx._lazy_graph_module import _LazyGraphModule

    for graph_module in module.modules():
        if isinstance(graph_module, _LazyGraphModule):
            graph_module.real_recompile()


@contextlib.contextmanager
def quick_build():
    """Build e3nn modules for inference without the einsum-order search (see the module's doc)."""
    import e3nn

    saved = e3nn.get_optimization_defaults()["optimize_einsums"]
    e3nn.set_optimization_defaults(optimize_einsums=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(optimize_einsums=saved)


def prune_unused_einsums(module: torch.nn.Module) -> int:
    """Drop from e3nn's generated code the einsums whose result nothing reads; the number dropped.

    For each path of a tensor product e3nn's code generator first writes the general outer product
    of the two inputs (an (n, u, v, i, j) array), then, where the path has specialised code (an input
    or the output a scalar), the specialised einsum that does not read it. In eager mode (groupae's)
    the generated code is not compiled, so the unread outer products are still computed: about a
    fifth of the encoder's CPU time (bench/RESULTS.md, "Embed at scale"). Only einsums (pure
    functions) and the reshapes that fed nothing else go: other unread nodes of generated code, such
    as the in-place copies of e3nn's `Extract`, are kept. The results are the same to the bit.
    """
    from torch import fx

    removed = 0
    for graph_module in module.modules():
        if not isinstance(graph_module, fx.GraphModule):
            continue
        graph, before = graph_module.graph, removed
        unread = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.functional.einsum
                  and not n.users]
        while unread:
            node = unread.pop()
            inputs = node.all_input_nodes
            graph.erase_node(node)
            removed += 1
            unread += [n for n in inputs if not n.users and n.op == "call_method" and n.target == "reshape"]
        if removed > before:
            graph_module.recompile()
    return removed


def output_in_pieces(tensor_product: torch.nn.Module) -> bool:
    """Have an e3nn tensor product return its output's pieces, a tuple of (..., k) tensors in the
    order of its output irreps, instead of joining them; False (nothing changed) where its
    generated code does not end by joining them.

    e3nn's generated code computes each group of paths into a piece of its own and concatenates
    them at the end. On the edges of a message-passing layer that join is a copy of the whole
    (edges, irreps) array in narrow strips, 20% of the encoder's CPU time; summed into the atoms
    piece by piece and joined there (`Interaction`) the same numbers cost a fraction of it.
    """
    from torch import fx

    graph_module = tensor_product._compiled_main_left_right
    graph = graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    if not (isinstance(result, fx.Node) and result.op == "call_method" and result.target == "reshape"):
        return False
    joined, shape = result.args[0], result.args[1:]
    if not (isinstance(joined, fx.Node) and joined.target is torch.cat and len(joined.users) == 1
            and isinstance(joined.args[0], (list, tuple))
            and joined.kwargs.get("dim", joined.args[1] if len(joined.args) > 1 else 0) in (1, -1)):
        return False
    output.args = (tuple(joined.args[0]),)
    graph.erase_node(result)
    graph.erase_node(joined)
    for node in shape:  # the output's shape, computed for the reshape alone
        if isinstance(node, fx.Node) and not node.users and node.op == "call_function":
            graph.erase_node(node)
    graph_module.recompile()
    return True


def _forget_e3nn() -> None:
    for name in [m for m in sys.modules if m == "e3nn" or m.startswith("e3nn.")]:
        del sys.modules[name]


def import_e3nn() -> None:
    if "e3nn.o3" in sys.modules:
        return
    stand_in = None
    if "sympy" not in sys.modules:
        stand_in = types.ModuleType("sympy", "stand-in while e3nn is imported (groupae_cli.models._startup)")
        for name in _SYMPY_NAMES:
            setattr(stand_in, name, None)
        sys.modules["sympy"] = stand_in
    original = torch.compiler.disable
    if "torch._dynamo" not in sys.modules:
        torch.compiler.disable = _identity
    try:
        try:
            import e3nn.o3

            users = sys.modules[_SYMPY_MODULE]
            if stand_in is not None:
                if not all(hasattr(users, f) for f in _SYMPY_USERS):
                    raise ImportError("e3nn's use of sympy is not what groupae expects")
                _lazy_sympy(users)
        except ImportError:  # e3nn took more from sympy than the stand-in holds: the plain way
            if stand_in is None:
                raise
            del sys.modules["sympy"]
            stand_in = None
            _forget_e3nn()
            import e3nn.o3  # noqa: F401
    finally:
        torch.compiler.disable = original
        if stand_in is not None and sys.modules.get("sympy") is stand_in:
            del sys.modules["sympy"]


import_e3nn()
_memoise_moments()
