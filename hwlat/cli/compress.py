"""``hwlat quantize``: an ONNX model to int8 (QDQ) with ONNX Runtime's static quantization."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwlat.cli import options
from hwlat.errors import ConfigError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize an ONNX model to int8 (QDQ format) with ONNX Runtime",
        description="Static quantization: activation ranges come from calibration inputs, weights are "
        "quantized per output channel by default. Nodes named with --exclude stay float32.",
    )
    p.add_argument("model", type=Path, help="the float ONNX model")
    options.add_out(p, "quantized ONNX model to write")
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="folder of calibration inputs: .npy files (one input array each) or .npz files "
        "(one array per graph input name)",
    )
    p.add_argument(
        "--random",
        type=int,
        metavar="N",
        help="calibrate on N random normal inputs (fine for latency, not for accuracy)",
    )
    p.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one weight scale per output channel (default) or one per tensor",
    )
    p.add_argument(
        "--exclude",
        action="extend",
        nargs="+",
        default=[],
        metavar="NODE",
        help="names of nodes that stay float32 (repeatable)",
    )
    p.add_argument(
        "--activation-type",
        choices=("int8", "uint8"),
        default="int8",
        help="int8 (S8S8, default) or uint8 (U8S8, which can saturate on x86 CPUs without VNNI)",
    )
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from hwlat.compress import quantizable_nodes, quantize_model

    if (args.calibration is None) == (args.random is None):
        both = args.random is not None
        raise ConfigError(
            "--calibration and --random do not go together" if both else "no calibration data",
            "pass either --calibration DIR or --random N",
        )
    names = quantizable_nodes(args.model)
    out = quantize_model(
        args.model,
        args.out,
        calibration=args.calibration,
        random_batches=args.random,
        per_channel=args.per_channel,
        exclude=args.exclude,
        activation_type=args.activation_type,
    )
    excluded = len(set(args.exclude))
    weights = "per channel" if args.per_channel else "per tensor"
    print(
        f"wrote {out}: {len(names) - excluded} of {len(names)} quantizable nodes quantized "
        f"({args.activation_type} activations, int8 weights {weights}), {excluded} left float32 (excluded)"
    )
    return 0
