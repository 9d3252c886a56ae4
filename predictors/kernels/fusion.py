"""Fusion rules: which producer -> consumer pairs a backend runs as one kernel, found by measurement.

For each candidate pair the probe measures A, B and A->B as harness kernels
(profiler/backends/ort/harness.py) and calls the pair *fused* when A->B costs clearly less than A and B
apart, ``t(A) + t(B) - t(A->B) > FUSED_SAVING * t(B)``, on any probed shape: grouping a pair
that does not fuse costs no accuracy (the group is measured as a whole), while missing a
saving adds it to every prediction as error (concat -> shuffle saves 40% at 58 channels, where
ORT keeps both in the plain layout, and nothing at 64, where it does not). That covers
real fusions (ONNX Runtime folds a residual add and the ReLU after it into the conv) and
shared layout work (concat -> channel shuffle -> split stay in the plain layout together,
while each alone pays NCHWc reorders at its ends). A fused pair is measured, looked up and
predicted as one kernel; a pair that is not fused costs the sum of its parts.

Rules are keyed ``"<kernel signature>><consumer class>"`` (``conv|add>act``); a signature
that was not probed falls back to its last op (``add>act``); a pair never probed is not fused.

An activation right after a float32 conv or gemm is probed per activation (``conv>act:elu``,
``EpilogueProbe``): the splitter writes such a pair as one op, the activation in the conv's
spec, where the runtime runs it inside the conv (ONNX Runtime's MLAS epilogues: ReLU, Clip,
sigmoid, ...), and as a conv plus an activation kernel where it runs the activation as a node
of its own (ELU, Mish, GELU, ...). Apart, the two costs add up, which a kernel regressor learns
far better than a conv whose time an expensive activation dominates. An activation never
probed stays in its conv, as before the probe existed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hwlat.errors import PredictorFormatError
from hwlat.profiler.kernel import SEPARATOR, InvalidKernelError, Kernel, op_class
from hwlat.profiler.opspec import ACTIVATIONS, OpSpec

FUSED_SAVING = 0.5
RULES_VERSION = 1
EPILOGUE_OPS = ("conv", "gemm")  # float32 ops whose spec can carry an activation the runtime runs apart


@dataclass
class FusionRules:
    backend: str
    fused: dict[str, bool] = field(default_factory=dict)
    evidence: list[dict] = field(default_factory=list)

    def fuses(self, signature: str, consumer: str) -> bool:
        exact = f"{signature}>{consumer}"
        if exact in self.fused:
            return self.fused[exact]
        return self.fused.get(f"{signature.split(SEPARATOR)[-1]}>{consumer}", False)

    def qdq_fuses(self, dtype: str, branching: bool) -> bool:
        """Whether the runtime fuses a QDQ op of ``dtype`` into one 8-bit kernel, when one of its
        8-bit tensors has several readers (``branching``) or none has. Probed on the device
        (``qdq_rules``); a predictor from before the probe took every QDQ op as fused."""
        return self.fused.get(f"qdq-branching:{dtype}" if branching else f"qdq:{dtype}", True)

    def runs_apart(self, spec: OpSpec) -> bool:
        """Whether the runtime runs the activation of ``spec``, a float32 conv or gemm, as a node
        of its own (probed per activation; one never probed stays in its op). An activation on
        one value per channel (a squeeze-and-excitation gate, a classifier's) stays too: it costs
        nothing measurable, and the kernel around it is measured whole."""
        if spec.op not in EPILOGUE_OPS or spec.activation == "none" or spec.dtype != "float32":
            return False
        out = spec.output_shapes[0]
        per_channel = math.prod(out) // out[1 if spec.op == "conv" else -1]
        return per_channel > 1 and not self.fused.get(f"{spec.op}>act:{spec.activation}", True)

    def unfold(self, spec: OpSpec) -> list[OpSpec]:
        """``spec``, or the conv or gemm without its activation and the activation, where the
        runtime runs that apart (``runs_apart``)."""
        if not self.runs_apart(spec):
            return [spec]
        bare = dataclasses.replace(spec, activation="none")
        return [bare, OpSpec("act", bare.output_shapes[0], activation=spec.activation)]

    def group(self, ops: Sequence[OpSpec]) -> list[Kernel]:
        """Kernels of a flat op list in execution order (a search space's ``ops(arch)``).

        An activation the runtime runs apart from its conv is taken out of the conv's spec
        (``unfold``). An op joins the kernel before it when its input is that kernel's output
        and the rules fuse the pair; ``globalavgpool, conv, conv, mul`` scaling the pool's
        input is one squeeze-and-excitation kernel.
        """
        ops = [part for op in ops for part in self.unfold(op)]
        kernels: list[Kernel] = []
        current: list[OpSpec] = []
        i = 0
        while i < len(ops):
            se = _se_at(ops, i)
            if se is not None:
                if current:
                    kernels.append(Kernel(tuple(current)))
                kernels.append(se)
                current = []
                i += len(se.ops)
                continue
            op = ops[i]
            if (
                current
                and current[-1].output_shapes[0] == op.input_shape
                and self.fuses(SEPARATOR.join(op_class(o) for o in current), op_class(op))
            ):
                current.append(op)
            else:
                if current:
                    kernels.append(Kernel(tuple(current)))
                current = [op]
            i += 1
        if current:
            kernels.append(Kernel(tuple(current)))
        return kernels

    def to_dict(self) -> dict:
        return {
            "version": RULES_VERSION,
            "backend": self.backend,
            "fused": dict(sorted(self.fused.items())),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: dict) -> FusionRules:
        if data.get("version") != RULES_VERSION:
            raise PredictorFormatError(
                f"fusion rules version {data.get('version')!r} is not {RULES_VERSION}; "
                "probe the fusions again (hwlat train)"
            )
        return cls(backend=data["backend"], fused=dict(data["fused"]), evidence=list(data["evidence"]))


def _se_at(ops: Sequence[OpSpec], i: int) -> Kernel | None:
    if ops[i].op != "globalavgpool" or i + 3 >= len(ops):
        return None
    try:
        kernel = Kernel(tuple(ops[i : i + 4]))
    except InvalidKernelError:
        return None
    return kernel if kernel.is_se else None


@dataclass(frozen=True)
class FusionProbe:
    """One candidate pair at one shape: kernel ``a`` followed by op ``b``."""

    a: Kernel
    b: OpSpec

    @property
    def rule(self) -> str:
        return f"{self.a.signature}>{op_class(self.b)}"

    @property
    def kernels(self) -> tuple[Kernel, Kernel, Kernel]:
        return self.a, Kernel((self.b,)), Kernel((*self.a.ops, self.b))


@dataclass(frozen=True)
class EpilogueProbe(FusionProbe):
    """An activation ``b`` after a lone float32 conv or gemm ``a``: measured together as the
    splitter writes the pair, one op carrying the activation (``conv>act:elu``)."""

    @property
    def rule(self) -> str:
        return f"{self.a.head.op}>act:{self.b.activation}"

    @property
    def kernels(self) -> tuple[Kernel, Kernel, Kernel]:
        joined = dataclasses.replace(self.a.head, activation=self.b.activation)
        return self.a, Kernel((self.b,)), Kernel((joined,))


def epilogue_probes() -> list[EpilogueProbe]:
    """Every activation after a 1x1 conv and after a channels-last linear layer, on 100,352
    outputs each (a 56x56 map of 32 channels): enough that an activation run apart shows."""
    conv = OpSpec("conv", (1, 32, 56, 56), out_channels=32, kernel=1)
    linear = OpSpec("gemm", (1, 3136, 32), out_channels=32)
    return [
        EpilogueProbe(Kernel((spec,)), OpSpec("act", spec.output_shapes[0], activation=activation))
        for spec in (conv, linear)
        for activation in ACTIVATIONS
        if activation != "none"
    ]


def default_probes(dtypes: tuple[str, ...] = ("float32",)) -> list[FusionProbe]:
    """The pairs CNNs contain, each at two shapes (one compute-heavy, one memory-heavy), and
    each activation after a conv or gemm; for an 8-bit dtype also the pairs of a quantized
    network (ORT's QLinear kernels fuse otherwise)."""
    probes: list[FusionProbe] = []
    for c, hw in ((64, 56), (160, 14)):
        x = (1, c, hw, hw)
        conv = OpSpec("conv", x, out_channels=c, kernel=1)
        conv_relu = OpSpec("conv", x, out_channels=c, kernel=1, activation="relu")
        add = OpSpec("add", x)
        relu = OpSpec("act", x, activation="relu")
        probes += [
            FusionProbe(Kernel((conv,)), add),
            FusionProbe(Kernel((conv_relu,)), add),
            FusionProbe(Kernel((conv, add)), relu),
            FusionProbe(Kernel((add,)), relu),
            FusionProbe(Kernel((conv,)), OpSpec("mul", x)),
        ]
    for half, hw in ((58, 28), (64, 14)):
        x = (1, 2 * half, hw, hw)
        concat = OpSpec("concat", x, parts=(half, half))
        shuffle = OpSpec("shuffle", x, groups=2)
        split = OpSpec("split", x, parts=(half, half))
        probes += [
            FusionProbe(Kernel((concat,)), shuffle),
            FusionProbe(Kernel((shuffle,)), split),
            FusionProbe(Kernel((concat, shuffle)), split),
        ]
    probes += epilogue_probes()
    for dtype in (d for d in dtypes if d != "float32"):
        for c, hw in ((64, 56), (160, 14)):
            x = (1, c, hw, hw)
            conv = OpSpec("conv", x, out_channels=c, kernel=1, dtype=dtype)
            probes += [
                FusionProbe(Kernel((conv,)), OpSpec("add", x, dtype=dtype)),
                FusionProbe(Kernel((conv,)), OpSpec("mul", x, dtype=dtype)),
            ]
        x = (1, 116, 28, 28)
        concat = OpSpec("concat", x, parts=(58, 58), dtype=dtype)
        shuffle = OpSpec("shuffle", x, groups=2, dtype=dtype)
        probes += [
            FusionProbe(Kernel((concat,)), shuffle),
            FusionProbe(Kernel((shuffle,)), OpSpec("split", x, parts=(58, 58), dtype=dtype)),
        ]
    return probes


def probe_kernels(probes: Iterable[FusionProbe]) -> list[Kernel]:
    """Every kernel the probes need measured (A, B and A->B of each)."""
    return list(dict.fromkeys(k for p in probes for k in p.kernels))


def decide(
    probes: Iterable[FusionProbe],
    backend: str,
    cost_ms: Callable[[Kernel], float | None],
    node_ops: Callable[[Kernel], list[str] | None] | None = None,
) -> FusionRules:
    """Fusion rules from measured kernel costs; a probe with a missing cost is left out.

    An epilogue probe is decided by the runtime's own profile where ``node_ops`` gives it (the
    op types the profiler recorded for a kernel): the activation runs apart when the conv with
    it runs more nodes than the conv alone. A cheap activation that does run inside the conv
    (ORT's HardSwish) saves about half its standalone time, too close to the cost threshold to
    call from timings. The profile's nodes do not depend on contention, so such a probe is
    decided even when a timing is missing (a row the canary flagged every time).
    """
    rules = FusionRules(backend)
    votes: dict[str, list[bool]] = {}
    for probe in probes:
        kernels = probe.kernels
        a, b, ab = (cost_ms(k) for k in kernels)
        evidence: dict = {"rule": probe.rule, "a": probe.a.key, "b": probe.b.key}
        fused = None
        if a is not None and b is not None and ab is not None:
            saving_ms = a + b - ab
            fused = saving_ms > FUSED_SAVING * b
            evidence.update(a_ms=a, b_ms=b, ab_ms=ab, saving_ms=saving_ms)
        if isinstance(probe, EpilogueProbe) and node_ops is not None:
            alone, joined = node_ops(kernels[0]), node_ops(kernels[2])
            if alone is not None and joined is not None:
                fused = len(joined) <= len(alone)
                evidence["ab_nodes"] = joined
        if fused is None:
            continue
        votes.setdefault(probe.rule, []).append(fused)
        rules.evidence.append({**evidence, "fused": fused})
    rules.fused = {rule: any(v) for rule, v in votes.items()}
    return rules
