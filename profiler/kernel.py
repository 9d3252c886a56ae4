"""Kernel: what a backend really executes as one unit, as a tuple of fused OpSpecs.

A kernel is its head op plus the ops the runtime fuses into it (``conv`` then ``add`` then
``act`` becomes one ONNX Runtime NCHWc convolution with a sum input and an activation), or a
pattern measured as one because its parts share layout conversions (squeeze-and-excitation:
``globalavgpool -> conv -> conv -> mul``). Its key joins the OpSpec keys with ``|`` and is
the primary key of tables and of the store's ``kernel`` rows.

Wiring: ops form a chain (each op's first input is the previous op's output; the other
inputs of add/mul/concat come from outside), except the SE pattern, whose ``mul`` multiplies
the kernel's input by the output of its last conv.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwlat.errors import HwlatError
from hwlat.profiler.opspec import BYTES_PER_ELEMENT, InvalidOpSpecError, OpSpec

SEPARATOR = "|"


class InvalidKernelError(HwlatError):
    """A sequence of OpSpecs that cannot form one kernel."""


@dataclass(frozen=True)
class Kernel:
    ops: tuple[OpSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops:
            raise InvalidKernelError("a kernel needs at least one op")
        se = self.is_se
        for i in range(1, len(self.ops)):
            prev, op = self.ops[i - 1], self.ops[i]
            if se and i == len(self.ops) - 1:
                if op.input_shape != self.ops[0].input_shape or op.input_shapes[1] != prev.output_shapes[0]:
                    raise InvalidKernelError(
                        f"SE kernel: the mul must scale the kernel input "
                        f"{self.ops[0].input_shape} by {prev.output_shapes[0]}"
                    )
                continue
            if op.input_shape != prev.output_shapes[0]:
                raise InvalidKernelError(
                    f"cannot fuse {op.key} after {prev.key}: its input {op.input_shape} is not the "
                    f"previous op's output {prev.output_shapes[0]}"
                )

    @property
    def is_se(self) -> bool:
        """Squeeze-and-excitation: globalavgpool, 1x1 convs, then mul by channel."""
        ops = self.ops
        return (
            len(ops) >= 3
            and ops[0].op == "globalavgpool"
            and ops[-1].op == "mul"
            and ops[-1].broadcast == "channel"
            and all(o.op == "conv" for o in ops[1:-1])
        )

    @property
    def head(self) -> OpSpec:
        return self.ops[0]

    @property
    def op(self) -> str:
        """Kernel type: the head op's type, ``dwconv`` for depthwise, ``se`` for the SE pattern."""
        if self.is_se:
            return "se"
        head = self.head
        if head.op == "conv" and head.groups > 1 and head.groups == head.input_shape[1] == head.out_channels:
            return "dwconv"
        return head.op

    @property
    def signature(self) -> str:
        """The op classes in order (``conv|add|act``); fusion rules are keyed by it."""
        return SEPARATOR.join(op_class(o) for o in self.ops)

    @property
    def key(self) -> str:
        return SEPARATOR.join(o.key for o in self.ops)

    @classmethod
    def from_key(cls, key: str) -> Kernel:
        try:
            return cls(tuple(OpSpec.from_key(k) for k in key.split(SEPARATOR)))
        except InvalidOpSpecError as exc:
            raise InvalidKernelError(f"bad kernel key {key!r}: {exc}") from None

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Tensors the kernel reads from outside, in order: the head's inputs, then the extra
        inputs of fused ops (the SE mul reads the kernel input, so it adds none)."""
        shapes = list(self.head.input_shapes)
        body = self.ops[1:-1] if self.is_se else self.ops[1:]
        for op in body:
            shapes.extend(op.input_shapes[1:])
        return tuple(shapes)

    @property
    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        return self.ops[-1].output_shapes

    @property
    def flops(self) -> int:
        return sum(o.flops for o in self.ops)

    @property
    def params(self) -> int:
        return sum(o.params for o in self.ops)

    @property
    def bytes_moved(self) -> int:
        """Bytes read from outside plus weights plus bytes written: what a fused kernel moves."""
        if len(self.ops) == 1:
            return self.head.bytes_moved
        inputs = sum(_numel(s) for s in self.input_shapes) * BYTES_PER_ELEMENT[self.head.dtype]
        outputs = sum(_numel(s) for s in self.output_shapes) * BYTES_PER_ELEMENT[self.ops[-1].dtype]
        return inputs + self.params * BYTES_PER_ELEMENT[self.head.dtype] + outputs

    def __str__(self) -> str:
        return self.key


def op_class(spec: OpSpec) -> str:
    """The op's type, with ``_act`` for convs and gemms that already carry an activation (an
    add after such a conv cannot be fused: the activation must come after the sum), and the
    dtype for 8-bit ops (``conv:int8``: their fusions are other kernels' and probed apart)."""
    name = f"{spec.op}_act" if spec.op in ("conv", "gemm") and spec.activation != "none" else spec.op
    return name if spec.dtype == "float32" else f"{name}:{spec.dtype}"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n
