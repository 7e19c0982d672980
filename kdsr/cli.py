"""The ``kdsr`` command line: run, validate, eval, infer, export, tradeoff, profile, convert, plugins.

A user error (``KdsrError``) prints one line and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kdsr.errors import KdsrError


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also follow the flags: `kdsr run cfg.yaml --resume steps=10`
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except KdsrError as exc:
        if args.debug:
            raise
        print(f"kdsr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdsr: interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p = argparse.ArgumentParser(prog="kdsr", description="Knowledge distillation for efficient super-resolution.", parents=[common])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="train and evaluate the stages of a config", description="Run a config: train every stage, evaluate, profile, write the report.")
    r.add_argument("config", type=Path, help="YAML config")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys, e.g. stages.0.steps=100")
    how = r.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue the run in the config's run directory")
    how.add_argument("--overwrite", action="store_true", help="discard the previous run (and its trained checkpoints) in the run directory")
    r.add_argument("--quiet", action="store_true", help="only warnings and errors")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", parents=[common], help="check a config without running it", description="Validate a config and every plugin option in it.")
    v.add_argument("config", type=Path)
    v.add_argument("overrides", nargs="*", metavar="key=value")
    v.add_argument("--print", action="store_true", help="print the resolved config (every default filled in)")
    v.set_defaults(func=cmd_validate)

    e = sub.add_parser("eval", parents=[common], help="evaluate a finished run's models or a weights file", description="Evaluate the models of a finished run on its eval sets or on given folders, or one network from a weights file (an export, or an official checkpoint with --backbone/--scale) on given folders; a file's evaluation reads no training data and writes nothing.")
    e.add_argument("run_dir", type=Path, metavar="RUN_OR_WEIGHTS", help="run directory (holds config.resolved.yaml) or weights file")
    e.add_argument("--folder", action="append", type=Path, default=[], help="evaluate on this HR image folder instead (repeatable; required for a weights file)")
    e.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    _network_args(e)
    _policy_args(e, default=None)
    _runtime_args(e)
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("infer", parents=[common], help="super-resolve images with a finished run", description="Super-resolve image files or folders with a run's branches, routed by an inference policy, tiled to any size. Writes PNGs and infer.json (branches chosen, Multi-Adds spent vs full, time).")
    i.add_argument("run_dir", type=Path, metavar="RUN_OR_WEIGHTS", help="run directory (holds config.resolved.yaml) or weights file")
    i.add_argument("inputs", type=Path, nargs="+", help="LR image files or folders")
    i.add_argument("--out", type=Path, required=True, help="output folder")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    _network_args(i)
    _policy_args(i, default="full")
    _runtime_args(i)
    i.set_defaults(func=cmd_infer)

    x = sub.add_parser("export", parents=[common], help="write one branch of a run as a standalone network", description="Write one trained branch of a run as a plain network (a CSSR width at its narrow width, a student without its heads): safetensors with a self-description in its metadata, ONNX (dynamic H and W, checked under onnxruntime; pip install 'kdsr[onnx]') or TorchScript (with a .json sidecar). The export is checked against the branch; nothing is written if a check fails.")
    x.add_argument("run_dir", type=Path, help="run directory (holds config.resolved.yaml)")
    x.add_argument("--branch", help="branch to export, e.g. w0.25 (default: the stage's only or first trained branch)")
    x.add_argument("--stage", help="stage (default: the last finished one)")
    x.add_argument("--out", type=Path, required=True, help="output file (.safetensors, .onnx, .ts)")
    x.add_argument("--format", choices=["safetensors", "onnx", "torchscript"], help="default: from the --out suffix")
    x.add_argument("--json", action="store_true", help="print what was written as JSON")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("tradeoff", parents=[common], help="PSNR vs Multi-Adds of a multi-branch run's policies", description="Evaluate every fixed branch and the budget policy at several budgets (calibrated on a separate folder); writes tradeoff.json and tradeoff.png into the run directory.")
    t.add_argument("run_dir", type=Path)
    t.add_argument("--calibration", type=Path, required=True, help="HR image folder to calibrate the budget policy on (not an eval set)")
    t.add_argument("--budgets", default="0.3,0.5,0.7", help="comma-separated Multi-Adds fractions (default 0.3,0.5,0.7)")
    t.add_argument("--folder", action="append", type=Path, default=[], help="evaluate on this HR folder instead of the run's eval sets")
    t.add_argument("--measure", default="learned", help="difficulty measure(s), comma-separated: learned (default), redegradation, gradient, edge, variance")
    t.add_argument("--cost", default="macs", choices=["macs", "time"], help="what the budgets are fractions of: Multi-Adds (default) or measured time")
    t.add_argument("--grid", type=int, default=20, help="score quantiles tried per branch boundary (default 20; at most the calibration patches)")
    t.add_argument("--tile", type=int, default=128)
    t.add_argument("--overlap", type=int, default=16)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_tradeoff)

    pr = sub.add_parser("profile", parents=[common], help="params, Multi-Adds and latency of backbones", description="Profile registered backbones (all of them at x2/x3/x4 by default) or the branches of a config.")
    pr.add_argument("--backbone", action="append", default=[], help="backbone name (repeatable); default: every registered one")
    pr.add_argument("--scale", type=int, action="append", default=[], help="scale (repeatable); default 2, 3, 4")
    pr.add_argument("--option", action="append", default=[], metavar="key=value", help="backbone option, e.g. n_feats=32")
    pr.add_argument("--config", type=Path, help="profile the branches of this config's stages instead")
    pr.add_argument("--hr-size", default="720x1280", help="SR output size HxW for Multi-Adds (default 720x1280)")
    pr.add_argument("--latency", action="store_true", help="also measure latency (median of 5) on the inference path of kdsr infer")
    _runtime_args(pr)
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)

    c = sub.add_parser("convert", parents=[common], help="convert an official checkpoint to safetensors", description="Read a reference implementation's checkpoint (EDSR-PyTorch, RCAN, CARN, SwinIR, BasicSR ...), map it onto a kdsr backbone, check it strictly and write safetensors.")
    c.add_argument("source", type=Path, help="checkpoint file (.pt/.pth/.safetensors)")
    c.add_argument("output", type=Path, help="output .safetensors file")
    c.add_argument("--backbone", required=True, help="registered backbone name")
    c.add_argument("--scale", type=int, required=True)
    c.add_argument("--option", action="append", default=[], metavar="key=value", help="backbone option, e.g. n_feats=256")
    c.set_defaults(func=cmd_convert)

    pl = sub.add_parser("plugins", parents=[common], help="list, show, find or scaffold plugins", description="Inspect installed plugins and what they register, browse the catalogue, scaffold a new plugin.")
    plsub = pl.add_subparsers(dest="plugins_command", required=True, metavar="ACTION")
    ls = plsub.add_parser("list", parents=[common], help="installed plugins, their versions and what they register")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--requirements", action="store_true", help="print name==version lines of external plugins")
    ls.set_defaults(func=cmd_plugins_list)
    sh = plsub.add_parser("show", parents=[common], help="details of a plugin or a registered name (options, taps)")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=cmd_plugins_show)
    av = plsub.add_parser("available", parents=[common], help="the catalogue of known plugins, marking installed ones")
    av.add_argument("--hook", help="only plugins implementing this registration hook, e.g. losses, backbones")
    av.add_argument("--json", action="store_true")
    av.set_defaults(func=cmd_plugins_available)
    nw = plsub.add_parser("new", parents=[common], help="scaffold a plugin package (pyproject, example, tests)", description="Write a pip-installable plugin package with a working example, tests built on kdsr.testing, an example config and a README.")
    nw.add_argument("name", help="plugin name, e.g. attention (package kdsr-attention, module kdsr_attention)")
    nw.add_argument("--hook", default="losses", help="what the example registers: losses (default) or backbones")
    nw.add_argument("--dir", type=Path, default=Path("."), help="parent folder (default: the current one)")
    nw.set_defaults(func=cmd_plugins_new)
    return p


def _network_args(p: argparse.ArgumentParser) -> None:
    """What network a foreign weights file holds (an export says it itself)."""
    p.add_argument("--backbone", help="for a weights file without kdsr metadata (official .pth/.pt): its registered backbone")
    p.add_argument("--scale", type=int, help="for a weights file without kdsr metadata: its scale")
    p.add_argument("--option", action="append", default=[], metavar="key=value", help="backbone option of such a file, e.g. n_feats=256")


def _models(args: argparse.Namespace):
    from kdsr.models import open_models

    return open_models(args.run_dir, args.backbone, args.scale, _parse_options(args.option))


def _policy_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--policy", default=default, help="inference policy: full, fixed, difficulty, budget, or a plugin's" + (f" (default {default})" if default else ""))
    p.add_argument("--policy-option", action="append", default=[], metavar="key=value", help="policy option, e.g. budget=0.5 (repeatable)")
    p.add_argument("--width", type=float, help="shorthand for --policy fixed --policy-option width=W")
    p.add_argument("--branch", help="shorthand for --policy fixed --policy-option branch=NAME")
    p.add_argument("--also", action="append", type=Path, default=[], metavar="RUN_OR_WEIGHTS",
                   help="route over this run's branches or exported student too (repeatable; one scale for all)")
    p.add_argument("--all-stages", action="store_true", help="route over every finished stage's trained branches, not only the last stage's")
    # None: not given (kdsr eval runs whole images unless one of them is given)
    p.add_argument("--tile", type=int, help="LR tile side (0: whole image at once; default auto: 128 px patches for per-patch policies, "
                   "else the fewest even tiles whose windows hold 2^17 LR pixels, so a 720p output is one window)")
    p.add_argument("--overlap", type=int, help=f"LR context pixels around each tile (default {TILING[1]})")
    p.add_argument("--batch", type=int, help="at most this many tiles per forward pass (default: as many as 2^17 LR pixels hold)")


TILING = ("auto", 16, None)  # default --tile, --overlap, --batch


def _tiling(args: argparse.Namespace) -> tuple[int | str | None, int, int | None]:
    """(tile, "auto", or None for whole images; overlap; batch), defaults filled in, checked."""
    tile, overlap, batch = (d if v is None else v for v, d in zip((args.tile, args.overlap, args.batch), TILING))
    if (tile != "auto" and tile < 0) or overlap < 0 or (batch is not None and batch < 1):
        raise KdsrError("--tile and --overlap must be >= 0 and --batch >= 1")
    return tile or None, overlap, batch


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", help="fp32 (default), bf16 (CPUs with AMX/AVX512-BF16, or a GPU) or int8 (onnxruntime's quantiser, needs --calibration)")
    p.add_argument("--backend", help="torch (default), onnxruntime (pip install 'kdsr[onnx]') or openvino (pip install 'kdsr[openvino]')")
    p.add_argument("--calibration", type=Path, help="int8: folder of images to calibrate activation ranges on")


def _runtime(args: argparse.Namespace):
    from kdsr.runtime import Runtime

    return Runtime(args.precision, args.backend, args.calibration)


def _router(args: argparse.Namespace, models):
    from kdsr.engine.infer import make_router

    policy, options = args.policy, _parse_options(args.policy_option, "--policy-option")
    if args.width is not None or args.branch is not None:
        if args.width is not None and args.branch is not None:
            raise KdsrError("give --width or --branch, not both")
        policy = "fixed"
        options = {"width": args.width} if args.width is not None else {"branch": args.branch}
    if policy is None:
        return None
    from kdsr.engine.infer import with_candidates

    return make_router(with_candidates(models, args.also, args.all_stages), policy, options, *_tiling(args), _runtime(args))


# ---------------------------------------------------------------- commands


def cmd_tradeoff(args: argparse.Namespace) -> int:
    from kdsr.engine.infer import tradeoff

    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise KdsrError(f"--budgets '{args.budgets}' must be comma-separated fractions, e.g. 0.3,0.5") from None
    if any(not 0 < b <= 1 for b in budgets):
        raise KdsrError(f"--budgets '{args.budgets}': every budget must be a fraction in (0, 1]")
    measures = [m.strip() for m in args.measure.split(",") if m.strip()]
    result = tradeoff(args.run_dir, args.calibration, budgets, args.folder, args.tile or None, args.overlap, measures, args.grid, args.cost)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for p in result["points"]:
        for s, sc in p["scores"].items():
            print(f"{p['label']:24s} {s:12s} psnr={sc['psnr']:.4f} ssim={sc['ssim']:.4f} macs={sc['macs_fraction']:.1%} time={sc['time_fraction']:.1%}")
    print(f"plot: {args.run_dir / 'tradeoff.png'}")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from kdsr.engine.infer import infer

    summary = infer(_router(args, _models(args)), args.inputs, args.out)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        budget = summary["budget"]
        target = f" (budget {budget['target']:.0%} of the {'Multi-Adds' if budget['kind'] == 'macs' else 'time'})" if budget else ""
        print(
            f"wrote {len(summary['images'])} image(s) to {args.out}; Multi-Adds {summary['macs_fraction']:.1%} and time "
            f"{summary['time_fraction']:.1%} of the full branch{target}, {summary['seconds']:.2f} s (details: {args.out / 'infer.json'})"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kdsr.config import load_config
    from kdsr.engine.build import check_config
    from kdsr.engine.run import run

    config = load_config(args.config, args.overrides)
    check_config(config)
    report = run(config, resume=args.resume, overwrite=args.overwrite)
    if report:
        print(f"report: {config.run_dir / 'report.md'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from kdsr.config import dump_config, load_config
    from kdsr.engine.build import check_config

    config = load_config(args.config, args.overrides)
    check_config(config)
    print(dump_config(config) if args.print else f"{args.config}: ok ({len(config.stages)} stage(s))")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kdsr.engine.restore import Tiling, evaluate_models

    models = _models(args)
    router = _router(args, models)
    tiled = router is None and any(v is not None for v in (args.tile, args.overlap, args.batch))
    tiling = Tiling(*_tiling(args)) if tiled else None
    results = evaluate_models(models, args.folder, args.self_ensemble, router, tiling, _runtime(args))
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for model, sets in results.items():
        for s, ms in sets.items():
            print(f"{model:24s} {s:12s} " + "  ".join(f"{m}={v:.4f}" for m, v in ms.items()))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from kdsr.report import profile_backbones

    try:
        h, w = (int(v) for v in args.hr_size.lower().split("x"))
    except ValueError:
        raise KdsrError(f"--hr-size '{args.hr_size}' must look like HEIGHTxWIDTH, e.g. 720x1280") from None
    options = _parse_options(args.option)
    rows = profile_backbones(args.backbone, args.scale or [2, 3, 4], options, (h, w), args.latency, args.config, _runtime(args))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':28s} {'scale':>5s} {'params':>12s} {'Multi-Adds (G)':>15s}" + ("  latency (s)" if args.latency else ""))
    for r in rows:
        lat = f"  {r['latency_s']:.3f}" if "latency_s" in r else ""
        print(f"{r['model']:28s} {r['scale']:>5d} {r['params']:>12,d} {r['macs'] / 1e9:>15.2f}{lat}")
    print(f"(Multi-Adds by fvcore for a {w}x{h} SR output)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdsr.export import export

    done = export(args.run_dir, args.out, args.branch, args.stage, args.format)
    if args.json:
        print(json.dumps(done, indent=1))
    else:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in done["max_diff"].items())
        print(f"wrote {done['output']} ({done['format']}): {done['backbone']} x{done['scale']} {done['options']} "
              f"from {done['stage']}/{done['branch']} (max |diff|: {diffs})")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from kdsr.models import load_file
    from kdsr.plain import PlainNetwork
    from kdsr.weights import save_weights

    if args.output.suffix != ".safetensors":
        raise KdsrError(f"output '{args.output}' must end in .safetensors")
    options = _parse_options(args.option)
    model, _ = load_file(args.source, args.backbone, args.scale, options)
    plain = PlainNetwork(args.backbone, options, args.scale, model.state_dict())
    save_weights(plain.state_dict, args.output, plain.metadata(format="safetensors", file=args.source.name))
    print(f"wrote {args.output} ({len(model.state_dict())} tensors, {args.backbone} x{args.scale})")
    return 0


def _parse_options(items: list[str], flag: str = "--option") -> dict[str, Any]:
    """``key=value`` items of a repeatable ``flag``; values parsed as YAML by the config's one parser."""
    from kdsr.config import parse_value

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise KdsrError(f"{flag} '{item}' must look like key=value")
        out[key.strip()] = parse_value(raw, f"{flag} '{item}'")
    return out


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from kdsr.plugins import get_plugins

    plugins = get_plugins()
    infos = sorted(plugins.info.values(), key=lambda i: (not i.builtin, i.name))
    if args.requirements:
        for i in infos:
            if not i.builtin and i.ok:
                print(f"{_dist_name(i.name)}=={i.version}")
        return 0
    if args.json:
        print(json.dumps([{"name": i.name, "version": i.version, "builtin": i.builtin, "error": i.error, "provides": i.provides} for i in infos], indent=1))
        return 0
    for i in infos:
        status = "builtin" if i.builtin else i.version
        if not i.ok:
            print(f"{i.name} ({status}): FAILED: {i.error}")
            continue
        print(f"{i.name} ({status})")
        for kind, names in sorted(i.provides.items()):
            print(f"  {kind}: {', '.join(sorted(names))}")
    return 0


def _dist_name(plugin: str) -> str:
    import importlib.metadata as md

    for dist in md.distributions():
        if any(ep.group == "kdsr" and ep.name == plugin for ep in dist.entry_points):
            return dist.metadata["Name"]
    return plugin


def cmd_plugins_show(args: argparse.Namespace) -> int:
    from kdsr.plugins import get_plugins

    plugins = get_plugins()
    found: list[dict[str, Any]] = []
    if args.name in plugins.info:
        i = plugins.info[args.name]
        found.append({"plugin": i.name, "version": i.version, "builtin": i.builtin, "error": i.error, "provides": i.provides})
    for reg in plugins.registries.values():
        if args.name in reg:
            found.append(describe_entry(reg.get(args.name)))
    if not found:
        from kdsr.errors import did_you_mean

        names = list(plugins.info) + [n for r in plugins.registries.values() for n in r.names()]
        raise KdsrError(f"no plugin or registered name '{args.name}'{did_you_mean(args.name, names)}; see `kdsr plugins list`")
    if args.json:
        print(json.dumps(found, indent=1, default=str))
        return 0
    for f in found:
        print("\n".join(f"{k}: {v}" for k, v in f.items() if k != "options" and k != "taps"))
        for opt in f.get("options", []):
            print(f"  option {opt['name']}: {opt['type']} = {opt['default']}")
        if f.get("taps"):
            print(f"  taps: {', '.join(f['taps'])}")
        print()
    return 0


def cmd_plugins_available(args: argparse.Namespace) -> int:
    import kdsr
    from kdsr.catalog import load_catalog

    entries = load_catalog()
    if args.hook:
        from typing import get_args

        from kdsr.catalog import Hook
        from kdsr.errors import did_you_mean

        hooks = get_args(Hook)
        if args.hook not in hooks:
            raise KdsrError(f"--hook '{args.hook}' is not a registration hook{did_you_mean(args.hook, hooks)}; hooks: {', '.join(hooks)}")
        entries = [e for e in entries if args.hook in e.provides]
    rows = [{**e.model_dump(mode="json"), "installed": e.installed_version(), "compatible": e.supports(kdsr.__version__)} for e in entries]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        state = f"installed {r['installed']}" if r["installed"] else f"pip install {r['package']}"
        note = "" if r["compatible"] else f"  (needs kdsr{r['kdsr']})"
        print(f"{r['name']:10s} [{state}]{note}  {r['summary']}")
        for hook, names in r["provides"].items():
            print(f"  {hook}: {', '.join(names)}")
    return 0


def cmd_plugins_new(args: argparse.Namespace) -> int:
    from kdsr.scaffold import new_plugin

    root = new_plugin(args.name, args.hook, args.dir)
    print(f"wrote {root}; next: pip install -e {root} && pytest {root / 'tests'} && kdsr run {root / 'configs' / 'example.yaml'}")
    return 0


def _type_label(hint: Any) -> str:
    """An option's type for `plugins show`, with the bounds a factory declares: ``tuple[int >= 1 <= 1024, ...]``."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = [f"{sym} {getattr(m, op)}" for e in args[1:] for m in getattr(e, "metadata", []) for op, sym in ops.items() if hasattr(m, op)]
        return " ".join([_type_label(args[0]), *bounds])
    if not args:
        return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_label(a) for a in args)
    inner = ", ".join("..." if a is Ellipsis else _type_label(a) for a in args)
    return f"{getattr(origin, '__name__', str(origin))}[{inner}]"


def describe_entry(entry) -> dict[str, Any]:
    import inspect

    from kdsr.branches import feature_taps
    from kdsr.registry import _type_hints

    info: dict[str, Any] = {"name": entry.name, "kind": entry.kind_label, "plugin": entry.plugin, "summary": entry.summary}
    hints = _type_hints(entry.factory)
    info["options"] = [
        {
            "name": n,
            "type": _type_label(hints.get(n, p.annotation)),
            "default": None if p.default is inspect.Parameter.empty else p.default,
        }
        for n, p in entry.option_fields().items()
    ]
    if entry.kind_label == "backbone":
        try:
            import torch

            with torch.device("meta"):
                model = entry.factory(scale=2)
            info["taps"] = list(feature_taps(model))
            info["official_checkpoints"] = entry.extra.get("load_official") is not None
        except Exception as exc:  # a backbone that cannot be built with defaults still gets listed
            info["taps"] = [f"(could not build with defaults: {exc})"]
    return info


if __name__ == "__main__":
    sys.exit(main())
