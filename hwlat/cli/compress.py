"""``hwlat quantize`` (an ONNX model to int8 QDQ with ONNX Runtime's static quantization) and
``hwlat compress`` (search per-layer pruning and/or int8 under a device's budgets)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwlat.cli import options
from hwlat.errors import EXIT_FAILED, ConfigError


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
        type=options.integer(1),
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
    add_compress_parser(sub)


def cmd_quantize(args: argparse.Namespace) -> int:
    from hwlat.compress import quantizable_nodes, quantize_model
    from hwlat.predictors import FusionRules, ModelSplitter
    from hwlat.profiler.onnx_models import load_model

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
    # An excluded conv or gemm between 8-bit layers is quantized by ORT itself (its
    # WeightBiasQuantization pass); the splitter follows ORT's passes.
    quantized = load_model(out)
    layers = {n.name for n in quantized.graph.node if n.op_type in ("Conv", "Gemm")}
    eight_bit = ModelSplitter(FusionRules("ort"), strict=False).split(quantized).eight_bit_nodes
    requantized = [n for n in dict.fromkeys(args.exclude) if n in layers and n in eight_bit]
    if requantized:
        print(
            f"note: ONNX Runtime quantizes {len(requantized)} of the excluded layers itself and runs them "
            "8-bit (they read and write 8-bit tensors); exclude the layer before each too to keep it "
            f"float32: {', '.join(requantized)}"
        )
    return 0


def add_compress_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="search per-layer channel pruning and/or int8 under a device's latency and memory budgets",
        description="AMC-style channel pruning (--method amc), HAQ-style per-layer float32/int8 (haq) or "
        "both (joint), under budgets from the device's predictor: a DDPG agent (or evolution, random) "
        "walks the layers, an action wall keeps every policy within budget, each policy is built "
        "(pruned, exported, quantized) and predicted. Writes the Pareto front of score, latency and "
        "memory next to uniform baselines (CSV, JSON, PNG) and the winners (ONNX, state dicts) to "
        "--out. Re-running the same command resumes the stored episodes.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="the network: package.module:factory returning a torch module, or an ONNX file "
        "(quantization only: --method haq)",
    )
    p.add_argument(
        "--input-shape", help="N,C,H,W of the input, e.g. 1,3,224,224 (required for a torch factory)"
    )
    p.add_argument("--predictor", type=Path, required=True, help="the device's trained latency predictor")
    p.add_argument(
        "--method", choices=("amc", "haq", "joint"), default="amc", help="what to search (default amc)"
    )
    p.add_argument("--latency-ms", type=options.number(0), help="latency budget on the device")
    options.add_safety_margin(p, "the latency budget")
    p.add_argument("--memory-mb", type=options.number(0), help="peak memory budget on the device")
    p.add_argument(
        "--eval",
        metavar="package.module:function",
        help="accuracy of a compressed model, evaluate(model) -> float (a torch module, or ONNX Runtime on "
        "an int8 model behind the same call); default: the output-fidelity proxy",
    )
    p.add_argument(
        "--finetune",
        metavar="package.module:function",
        help="a short fine-tune of each pruned torch model, finetune(model) -> model, before it is scored",
    )
    p.add_argument(
        "--calibration",
        help="inputs for int8 calibration and the fidelity proxy: a folder of .npy files or "
        "package.module:function returning a batch (default: random normal inputs)",
    )
    p.add_argument(
        "--calibration-size", type=options.integer(1), default=32, help="calibration inputs used (default 32)"
    )
    p.add_argument(
        "--episodes", type=options.integer(1), default=100, help="policies to search, a total (default 100)"
    )
    p.add_argument(
        "--strategy",
        choices=("ddpg", "evolution", "random"),
        default="ddpg",
        help="search agent (default ddpg)",
    )
    p.add_argument(
        "--warmup",
        type=options.integer(0),
        default=20,
        help="ddpg: random episodes before learning (default 20)",
    )
    p.add_argument("--seed", type=options.integer(0), default=0, help="seed of the agent (default 0)")
    p.add_argument(
        "--lbound",
        type=options.number(0, maximum=1),
        default=0.2,
        help="smallest keep ratio of a layer (default 0.2)",
    )
    p.add_argument(
        "--round-to", type=options.integer(1), help="kept channel counts in multiples of N (default 1)"
    )
    p.add_argument(
        "--dtypes",
        help="layer dtypes to search, e.g. float32,int8 (default: what the predictor can cost; int8 only "
        "with a predictor trained on int8 kernels)",
    )
    p.add_argument(
        "--tvm-predictor", type=Path, help="a TVM predictor of the device: float32 baselines on TVM as well"
    )
    p.add_argument("--top", type=options.integer(0), default=3, help="winners exported (default 3)")
    p.add_argument("--study", help="name of the stored search (default: the output folder's name)")
    options.add_out(p, "output folder: policies.csv, pareto.json, pareto.png, winners/")
    g = p.add_argument_group("verification on the device")
    g.add_argument(
        "--verify",
        type=options.integer(0),
        default=0,
        metavar="K",
        help="measure the top K winners on the device",
    )
    g.add_argument("--device", help="device to verify on (default: the predictor's device)")
    g.add_argument(
        "--noise-band",
        type=options.number(0, above=False),
        default=0.05,
        help="measured up to budget x (1 + band) still passes (default 0.05)",
    )
    g.add_argument(
        "--verify-repeats", type=options.integer(1), default=3, help="measurements per winner (median pass)"
    )
    options.add_backend(g, tune_trials=False)
    options.add_inventory(g)
    options.add_db(g)
    options.add_wait(g)
    options.add_protocol(p)
    p.set_defaults(func=cmd_compress)


def cmd_compress(args: argparse.Namespace) -> int:
    from hwlat.devices.inventory import resolve_device
    from hwlat.search.compression import (
        CompressionEnv,
        PredictorCostModel,
        compression_search,
        format_verification,
        verify_winners,
    )
    from hwlat.search.objectives import searched_budget_ms

    if args.latency_ms is None and args.memory_mb is None:
        raise ConfigError("no budget", "give --latency-ms, --memory-mb or both")
    model, label = _load_model(args.model)
    input_shape = _input_shape(args, model)
    dtypes = [d.strip() for d in args.dtypes.split(",")] if args.dtypes else None
    cost_model = PredictorCostModel.load(args.predictor, dtypes=None)
    tvm = PredictorCostModel.load(args.tvm_predictor, dtypes=("float32",)) if args.tvm_predictor else None
    evaluate = options.load_callable(args.eval) if args.eval else None
    finetune = options.load_callable(args.finetune) if args.finetune else None
    calibration = _calibration(args.calibration) if args.calibration else None
    margin_pct, searched_ms = 0.0, None
    if args.latency_ms is not None:
        margin_pct = options.safety_margin_pct(args, cost_model.predictor)
        searched_ms = searched_budget_ms(args.latency_ms, margin_pct)
    env = CompressionEnv(
        model,
        input_shape,
        cost_model,
        method=args.method,
        latency_ms=searched_ms,
        memory_mb=args.memory_mb,
        evaluate=evaluate,
        finetune=finetune,
        calibration=calibration,
        calibration_size=args.calibration_size,
        lbound=args.lbound,
        round_to=args.round_to,
        dtypes=dtypes,
        label=label,
        seed=args.seed,
    )
    budgets = ", ".join(
        f"{name} <= {value:g} {unit}"
        for name, value, unit in (("latency", args.latency_ms, "ms"), ("memory", args.memory_mb, "MB"))
        if value is not None
    )
    if margin_pct:
        budgets += f" (searched at {searched_ms:.4g} ms: the predictor's {margin_pct:.1f}% safety margin)"
    print(
        f"{args.method} compression of {label} ({env.analysis.summary()}) on {cost_model.device}, "
        f"{args.strategy}, {args.episodes} episodes, layer dtypes {'/'.join(env.supported_dtypes)}, "
        f"{budgets}; score: {env.score_name}"
    )
    strategy_options = {"warmup": args.warmup} if args.strategy == "ddpg" else {}
    with options.open_store(args) as store:
        result = compression_search(
            env,
            args.strategy,
            args.episodes,
            args.out,
            store=store,
            study_name=args.study,
            seed=args.seed,
            strategy_options=strategy_options,
            top_k=max(args.top, args.verify),
            callback=_progress(args.episodes),
            tvm_cost_model=tvm,
        )
        print(result.summary())
        if not result.front:
            print("hwlat: no policy met every budget; raise the budgets or --episodes", file=sys.stderr)
            return EXIT_FAILED
        if not args.verify:
            return 0
        device = resolve_device(args.device or cost_model.device, args.inventory)
        results = verify_winners(
            result,
            device,
            store,
            args.verify,
            args.out,
            backend=args.backend,
            protocol=options.protocol(args),
            noise_band=args.noise_band,
            repeats=args.verify_repeats,
            latency_budget_ms=args.latency_ms,
        )
        print(f"verified on {device.name}/{args.backend} (predicted vs measured):")
        print(format_verification(results))
        return 0 if all(r.meets_budget_within_noise for r in results) else EXIT_FAILED


def _load_model(spec: str):
    """(model, label): an ONNX file's path, or the torch module a factory returns."""
    path = Path(spec)
    if path.suffix == ".onnx" or (path.exists() and ":" not in spec):
        if not path.exists():
            raise ConfigError(f"model file {path} does not exist", "check the path")
        return path, path.stem
    factory = options.load_callable(spec)
    model = factory()
    if not hasattr(model, "named_modules") or not callable(model):
        raise ConfigError(
            f"{spec} returned a {type(model).__name__}, not a torch module", "return a torch.nn.Module"
        )
    return model, spec.rsplit(".", 1)[-1]


def _input_shape(args: argparse.Namespace, model) -> tuple[int, ...]:
    if args.input_shape:
        try:
            shape = tuple(int(v) for v in args.input_shape.replace("x", ",").split(","))
        except ValueError:
            raise ConfigError(
                f"--input-shape {args.input_shape!r} is not N,C,H,W", "e.g. 1,3,224,224"
            ) from None
        if len(shape) < 2 or min(shape) < 1:
            raise ConfigError(f"--input-shape {args.input_shape!r} is not N,C,H,W", "e.g. 1,3,224,224")
        return shape
    if isinstance(model, Path):
        from hwlat.profiler.onnx_models import OnnxGraph, load_model

        proto = load_model(model)
        graph = OnnxGraph(proto)
        first = next(i.name for i in proto.graph.input if i.name not in graph.static)
        return tuple(graph.shapes[first])
    raise ConfigError("a torch model needs --input-shape", "e.g. --input-shape 1,3,224,224")


def _calibration(spec: str):
    import numpy as np

    path = Path(spec)
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise ConfigError(f"calibration folder {path} holds no .npy files")
        arrays = [np.load(f, allow_pickle=False) for f in files]
        ndim = max(a.ndim for a in arrays)
        return np.concatenate([a if a.ndim == ndim else a[None] for a in arrays], axis=0)
    if ":" in spec:
        return options.load_callable(spec)()
    raise ConfigError(
        f"--calibration {spec!r} is neither a folder nor package.module:function",
        "give a folder of .npy inputs or a function returning a batch",
    )


def _progress(total: int):
    def show(env, study, trial) -> None:
        from hwlat.search.compression.search import summarize_policy

        policy = env.policy_of(trial.arch)
        score, latency, memory = trial.values[:3]
        best = max((t.values[0] for t in study.trials if t.feasible), default=float("nan"))
        verdict = "within budget" if trial.feasible else "OVER BUDGET"
        print(
            f"episode {trial.number + 1}/{total}: {env.score_name} {score:.4f}, {latency:.4g} ms, "
            f"{memory:.4g} MB, {summarize_policy(env, policy)}; {verdict}; best {best:.4f}",
            flush=True,
        )

    return show
