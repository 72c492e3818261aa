"""Where activations are quantized: ``conv`` (the input of every quantized conv) or ``full`` (also every input of the
residual Adds and Concats, with the step sizes an all-INT8 deployed graph needs tied together).

Why ``full``: with conv inputs only, the Adds of the residual blocks and every Concat (C2f, SPPF, the neck) run on
float tensors, so TensorRT cannot fuse an Add into its INT8 conv and reformats tensors between INT8 and FP16 around
every Concat, and ONNX Runtime's CPU INT8 model has to calibrate those ranges after training. ``full`` quantizes
what the deployed INT8 graph needs to stay INT8 (NVIDIA's yolo_deepstream ``yolov7_qat`` rules):

* **residual Add**: the residual input, with the quantizer of the conv that reads the same tensor; the branch
  output (a conv and its activation) stays unquantized, which is what lets TensorRT fuse the Add into that INT8 conv
  (TensorRT's Q/DQ placement recommendations: quantize the residual input of an element-wise addition, not the outputs
  of weighted ops);
* **Concat**: every input with ONE quantizer, the input quantizer of the conv that reads the Concat's output, so the
  INT8 values pass through the Concat unchanged (MaxPool and nearest Upsample commute with quantization and pass
  the grid through);
* **a tensor read by several quantization points** (a neck output feeding the next stage and both head branches; a
  C2f chunk feeding its Concat and the next Bottleneck) has one step size for all of them.

Tied points share one :class:`~gor_det.quant.numerics.FakeQuantizer` (the *owner*, registered and saved at one
place); every other point holds a :class:`TiedQuantizer`, which has no tensors of its own, so checkpoints, EMA and the
optimizer see each step size once. The ties are derived from the model's structure: block rules for Ultralytics'
``Bottleneck``, ``C2f`` (and ``C3k2``), ``C3`` (and ``C3k``), ``SPPF``, ``C2PSA``, ``PSABlock`` and ``Attention`` (matched by class
name and only while the class's own ``forward`` is in use, so a subclass with another forward is left alone), and
the model's layer graph (each layer's ``f``: ``Concat``, ``Upsample``, ``MaxPool2d`` and ``Detect`` inputs). A placed
block gets an instance ``forward`` (:class:`BlockForward`, picklable) computing exactly the original arithmetic with
the quantizers inserted; :func:`unplace` is its exact inverse. This module never imports ultralytics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gor_det.quant.modules import QuantModule
from gor_det.quant.numerics import FakeQuantizer

PLACEMENTS = ("conv", "full")
Point = tuple  # (module, attribute name): where a quantizer (or its tie) is held


class TiedQuantizer(nn.Module):
    """A quantization point that uses another quantizer: ``forward(x) = source(x)``. Holds no tensors; reads such as
    ``scale``, ``zero_point``, ``qmin``, ``is_initialized`` are the source's. ``source_name``: where the source lives."""

    def __init__(self, source: FakeQuantizer, source_name: str = ""):
        super().__init__()
        object.__setattr__(self, "source", source)  # not a submodule: saved, trained and averaged where it lives
        self.source_name = source_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.source(x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            src = self.__dict__.get("source")
            if src is None or name.startswith("__"):
                raise
            return getattr(src, name)

    def extra_repr(self) -> str:
        return f"tied to {self.source_name or 'a shared quantizer'}"


class BlockForward:
    """The instance ``forward`` of a placed block: ``fn(block, *args)``; picklable (``fn`` is a module function)."""

    def __init__(self, block: nn.Module, fn: Callable):
        self.block, self.fn = block, fn

    def __call__(self, *args, **kwargs):
        return self.fn(self.block, *args, **kwargs)


# ------------------------------------------------------------------------------------------------- block forwards
def _bottleneck(m, x):
    xq = m.res_q(x)
    return xq + m.cv2(m.cv1(xq))


def _c2f(m, x):
    q = m.cat_q
    y = [q(t) for t in m.cv1(x).chunk(2, 1)]
    for b in m.m:
        y.append(q(b(y[-1])))
    return m.cv2(torch.cat(y, 1))


def _c3(m, x):
    q = m.cat_q
    return m.cv3(torch.cat((q(m.m(m.cv1(x))), q(m.cv2(x))), 1))


def _sppf(m, x):
    q = m.cat_q
    y = [q(m.cv1(x))]
    y.extend(m.m(y[-1]) for _ in range(getattr(m, "n", 3)))  # max-pooling keeps the grid: no quantizer needed
    out = m.cv2(torch.cat(y, 1))
    return m.res_q(x) + out if getattr(m, "add", False) else out


def _c2psa(m, x):
    a, b = m.cv1(x).split((m.c, m.c), dim=1)
    q = m.cat_q
    return m.cv2(torch.cat((q(a), q(m.m(b))), 1))


def _psablock(m, x):
    xq = m.res_q(x)
    x = xq + m.attn(xq)
    xq = m.res2_q(x)
    return xq + m.ffn(xq)


def _attention(m, x):
    b, c, h, w = x.shape
    q, k, v = m.qkv(x).view(b, m.num_heads, m.key_dim * 2 + m.head_dim, h * w).split(
        [m.key_dim, m.key_dim, m.head_dim], dim=2)
    attn = ((q * m.scale).transpose(-2, -1) @ k).softmax(dim=-1)
    # the Add of the positional conv: its other input (the attention output) quantized, as a residual input
    y = m.mix_q((v @ attn.transpose(-2, -1)).view(b, c, h, w)) + m.pe(v.reshape(b, c, h, w))
    return m.proj(y)


def _concat(m, x):
    return torch.cat([m.in_q(t) for t in x], m.d)


# ------------------------------------------------------------------------------------------------- the placement
class _Placer:
    """Collects quantization points, ties (union-find), block quantizer slots and forwards; :meth:`apply` installs."""

    def __init__(self, model: nn.Module, qcfg):
        self.model, self.qcfg = model, qcfg
        self.names = {id(m): n for n, m in model.named_modules()}
        self.points: dict[tuple, Point] = {}
        self.parent: dict[tuple, tuple] = {}
        self.slots: list[tuple[nn.Module, str, Point]] = []  # (block, attr, point): block.attr = the point's quantizer
        self.forwards: list[tuple[nn.Module, Callable]] = []
        self.prequantized: list[nn.Module] = []  # convs whose input arrives quantized by their own (tied) quantizer
        self.new: list[Point] = []  # block-owned quantizers to create
        self.fed_quantized: set[int] = set()  # blocks whose input a parent block has already quantized (ids)

    @staticmethod
    def key(p: Point) -> tuple:
        return id(p[0]), p[1]

    def find(self, p: Point) -> tuple:
        k = self.key(p)
        self.points.setdefault(k, p)
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def tie(self, points) -> Point | None:
        """Tie ``points`` to one quantizer; returns a point of the group (None for no points)."""
        points = [q for q in points if q is not None]
        if not points:
            return None
        r0 = self.find(points[0])
        for q in points[1:]:
            r = self.find(q)
            if r != r0:
                self.parent[r] = r0
        return points[0]

    def own(self, block: nn.Module, attr: str) -> Point:
        """A new quantizer held by ``block`` as ``attr`` (created by :meth:`apply`)."""
        p = (block, attr)
        self.new.append(p)
        self.find(p)
        return p

    def slot(self, block: nn.Module, attr: str, point: Point | None) -> None:
        """``block.attr`` becomes a tie to ``point``'s quantizer (what the block's forward calls); ``None``: an
        identity, for a tensor that arrives on that quantizer's grid already."""
        self.slots.append((block, attr, point))

    def quantized_input(self, mod: nn.Module) -> None:
        """Every conv at ``entries(mod)`` receives a tensor already quantized by its own (tied) quantizer."""
        self.prequantized.extend(q for q, _ in entries(mod))

    def apply(self) -> dict:
        """Install: the owned quantizers, one owner per group (its first point), ties elsewhere, slots, forwards."""
        for block, attr in self.new:
            setattr(block, attr, FakeQuantizer.for_acts(self.qcfg).to(_device(self.model)))
        owners: dict[tuple, tuple[FakeQuantizer, str]] = {}
        for k in self.points:
            r = self.find(self.points[k])
            if r not in owners:
                rp = self.points[r]
                owners[r] = getattr(rp[0], rp[1]), self._where(rp)
        ties = 0
        for mod, attr in self.points.values():
            owner, where = owners[self.find((mod, attr))]
            if getattr(mod, attr) is not owner:
                setattr(mod, attr, TiedQuantizer(owner, where))
                ties += 1
        for block, attr, p in self.slots:
            setattr(block, attr, nn.Identity() if p is None else TiedQuantizer(*owners[self.find(p)]))
        for q in self.prequantized:
            q.input_quantized = True
        for block, fn in self.forwards:
            block.forward = BlockForward(block, fn)
        return {"ties": ties, "quantizers": len(owners)}

    def _where(self, p: Point) -> str:
        return f"{self.names.get(id(p[0]), '?')}.{p[1]}"


def _device(m: nn.Module) -> torch.device:
    t = next(iter(m.parameters()), None)
    return t.device if t is not None else torch.device("cpu")


def _cls_rule(m: nn.Module):
    """The block rule for ``m``: the first class in its MRO with a rule whose ``forward`` is the one ``m`` runs."""
    for cls in type(m).__mro__:
        rule = BLOCK_RULES.get(cls.__name__)
        if rule is not None:
            return rule if type(m).forward is cls.__dict__.get("forward") else None
    return None


def entries(mod) -> list[Point]:
    """The quantization points a tensor entering ``mod`` reaches first (``[]``: it is read in float or unknown)."""
    if mod is None:
        return []
    if isinstance(mod, QuantModule):
        return [(mod, "act_q")]
    if isinstance(mod, nn.Sequential):
        return entries(next(iter(mod), None))
    kids = dict(mod.named_children())
    if isinstance(kids.get("conv"), QuantModule) and set(kids) <= {"conv", "act"}:  # a prepared Conv block
        return [(kids["conv"], "act_q")]
    name = next((c.__name__ for c in type(mod).__mro__ if c.__name__ in ENTRY_CHILDREN), None)
    if name is None:
        return []
    return [p for c in ENTRY_CHILDREN[name] for p in entries(getattr(mod, c, None))]


# Which children read a block's input (its entry points)
ENTRY_CHILDREN = {"Bottleneck": ("cv1",), "C2f": ("cv1",), "C3": ("cv1", "cv2"), "SPPF": ("cv1",), "C2PSA": ("cv1",),
                  "PSABlock": ("attn",), "Attention": ("qkv",)}


# A rule places one block and returns (residual Adds, Concats) it quantized, or None to leave the block as it is.
def _rule_bottleneck(p: _Placer, m):
    if not getattr(m, "add", False) or not entries(m.cv1) or not entries(m.cv2):
        return None
    tied = p.tie(entries(m.cv1))
    p.slot(m, "res_q", None if id(m) in p.fed_quantized else tied)  # inside a C2f its input is quantized already
    p.quantized_input(m.cv1)
    p.forwards.append((m, _bottleneck))
    return 1, 0


def _place_concat(p: _Placer, m, reader: nn.Module, also=(), fn=None) -> bool:
    """``m.cat_q``: the Concat whose output ``reader`` reads, tied to ``reader``'s input step and to the points
    ``also`` (other readers of the Concat's inputs); False when ``reader`` is not quantized."""
    cat = entries(reader)
    if not cat:
        return False
    p.slot(m, "cat_q", p.tie(cat + list(also)))
    p.quantized_input(reader)
    p.forwards.append((m, fn))
    return True


def _rule_c2f(p: _Placer, m):
    if not _place_concat(p, m, m.cv2, [e for b in m.m for e in entries(b)], _c2f):  # the chunks also feed m[0]
        return None
    for b in m.m:
        p.quantized_input(b)
        while isinstance(b, nn.Sequential) and len(b):  # the block that reads the quantized chunk
            b = b[0]
        p.fed_quantized.add(id(b))
    return 0, 1


def _rule_c3(p: _Placer, m):
    if not _place_concat(p, m, m.cv3, fn=_c3):
        return None
    p.tie(entries(m.cv1) + entries(m.cv2))  # both read the block's input
    return 0, 1


def _rule_sppf(p: _Placer, m):
    add = getattr(m, "add", False)
    if (add and not entries(m.cv1)) or not _place_concat(p, m, m.cv2, fn=_sppf):
        return None
    if add:
        p.slot(m, "res_q", p.tie(entries(m.cv1)))
    return int(add), 1


def _rule_c2psa(p: _Placer, m):
    # both halves of one split share a step (ONNX Runtime gives a Split's outputs one quantization)
    return (0, 1) if _place_concat(p, m, m.cv2, entries(m.m), _c2psa) else None


def _rule_psablock(p: _Placer, m):
    if not getattr(m, "add", False) or not entries(m.attn) or not entries(m.ffn):
        return None
    p.slot(m, "res_q", p.tie(entries(m.attn)))
    p.slot(m, "res2_q", p.tie(entries(m.ffn)))
    p.quantized_input(m.attn)
    p.quantized_input(m.ffn)
    p.forwards.append((m, _psablock))
    return 2, 0


def _rule_attention(p: _Placer, m):
    if getattr(m, "format", None) is not None or not entries(m.pe) or not entries(m.proj):
        return None  # (the coreml form runs scaled_dot_product_attention: left as it is)
    p.own(m, "mix_q")
    p.forwards.append((m, _attention))
    return 1, 0


BLOCK_RULES: dict[str, Callable] = {
    "Bottleneck": _rule_bottleneck, "C2f": _rule_c2f, "C3": _rule_c3, "SPPF": _rule_sppf, "C2PSA": _rule_c2psa,
    "PSABlock": _rule_psablock, "Attention": _rule_attention,
}
PASS_THROUGH = ("Upsample", "MaxPool2d")  # layers that keep the INT8 grid: their input takes their readers' scale


def _layers(model: nn.Module):
    """Ultralytics' layer list (``model.model``: each layer with ``f`` (from) and ``i`` (index)), or None."""
    seq = getattr(model, "model", None)
    if isinstance(seq, nn.Sequential) and len(seq) and all(hasattr(m, "f") and hasattr(m, "i") for m in seq):
        return list(seq)
    return None


def _froms(layer) -> list[int]:
    f = layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]
    return [layer.i + j if j < 0 else j for j in f]


def _is_detect(m) -> bool:
    return hasattr(m, "cv2") and hasattr(m, "cv3") and hasattr(m, "nl") and hasattr(m, "stride")


def _place_layers(p: _Placer, layers: list) -> int:
    """Ties across layers (the readers of each layer's output; Concat inputs; pass-through layers; Detect levels);
    returns the number of Concat layers quantized."""
    readers: dict[int, list[tuple]] = {}  # layer index -> [(reader layer, input slot)]
    for la in layers:
        for slot, j in enumerate(_froms(la)):
            readers.setdefault(j, []).append((la, slot))
    memo: dict[tuple, list] = {}

    def is_concat(la) -> bool:
        return type(la).__name__ == "Concat" and type(la).forward is _class_forward(la, "Concat")

    def reached(la, slot) -> list[Point]:  # the points a tensor entering layer ``la`` at ``slot`` reaches first
        key = (la.i, slot)
        if key not in memo:
            memo[key] = []  # (a cycle cannot occur in a layer list; this guards the recursion anyway)
            if is_concat(la):
                out = [e for r in readers.get(la.i, []) for e in reached(*r)]
                memo[key] = [(la, "in_q")] if out else []
            elif type(la).__name__ in PASS_THROUGH:
                memo[key] = [e for r in readers.get(la.i, []) for e in reached(*r)]
            elif _is_detect(la):
                memo[key] = [e for br in ("cv2", "cv3", "one2one_cv2", "one2one_cv3") if hasattr(la, br)
                             for e in entries(getattr(la, br)[slot])]
            else:
                memo[key] = entries(la)
        return memo[key]

    concats = 0
    for la in layers:
        if not is_concat(la):
            continue
        rs = readers.get(la.i, [])
        out = [e for r in rs for e in reached(*r)]
        if not out:
            continue
        p.own(la, "in_q")
        p.tie([(la, "in_q")] + out)
        for r, _ in rs:  # a block reading only this Concat's output gets it quantized already
            if not (is_concat(r) or type(r).__name__ in PASS_THROUGH or _is_detect(r)):
                p.quantized_input(r)
        p.forwards.append((la, _concat))
        concats += 1
    for la in layers:
        p.tie([e for r in readers.get(la.i, []) for e in reached(*r)])
    return concats


def _class_forward(m, name):
    cls = next((c for c in type(m).__mro__ if c.__name__ == name), None)
    return None if cls is None else cls.__dict__.get("forward")


def place_full(model: nn.Module, qcfg) -> dict:
    """The ``full`` placement on a model whose convs :func:`~gor_det.quant.prepare_qat` has already replaced (in
    place). Returns counts ``{"blocks", "residual_adds", "concats", "ties", "quantizers"}`` (``quantizers``: distinct
    activation step sizes at the placed points)."""
    p = _Placer(model, qcfg)
    adds = cats = 0
    for m in list(model.modules()):
        rule = _cls_rule(m)
        placed = rule(p, m) if rule is not None else None
        if placed:
            adds, cats = adds + placed[0], cats + placed[1]
    layers = _layers(model)
    if layers is not None:
        cats += _place_layers(p, layers)
    counts = p.apply()
    return {"blocks": len(p.forwards), "residual_adds": adds, "concats": cats, **counts}


SLOTS = ("res_q", "res2_q", "cat_q", "in_q", "mix_q")


def unplace(model: nn.Module) -> nn.Module:
    """Exact inverse of :func:`place_full` on the blocks (their class ``forward`` back, the block quantizers removed);
    the convs' quantizers go with :func:`~gor_det.quant.strip_qat`. In place; returns ``model``."""
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), BlockForward):
            del m.__dict__["forward"]
        for s in SLOTS:
            if s in m._modules and isinstance(m._modules[s], (FakeQuantizer, TiedQuantizer, nn.Identity)):
                del m._modules[s]
        if isinstance(m, QuantModule):
            m.__dict__.pop("input_quantized", None)
    return model


def is_placed(model: nn.Module) -> bool:
    """True when ``model`` holds blocks of the ``full`` placement."""
    return any(isinstance(m.__dict__.get("forward"), BlockForward) for m in model.modules())
