"""`bacon-zoo export | import-usb | import-weights | push | pull | predict | zoo`: the Hub side of the zoo.

Each command imports torch / timm / huggingface_hub inside its function, so `bacon-zoo --help` stays fast.
"""

from __future__ import annotations

import argparse

from bacon_zoo.errors import UserError
from bacon_zoo.run.layout import EXPORT, EXPORT_MANIFEST, TIMM_CONFIG, TIMM_WEIGHTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help=f"export a run as a timm Hub repo folder (weights, {TIMM_CONFIG}, model card)",
        description=f"Writes RUN_DIR/{EXPORT} (or --out): the EMA model's evaluation head as a timm "
        f"classifier, the full BaconNet, the run's records, a model card and {EXPORT_MANIFEST}. "
        "Atomic. An export you changed (files added or edited) is never replaced without --force.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="export folder (default: RUN_DIR/export)")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint dir (default: the latest)")
    p.add_argument(
        "--name",
        metavar="ARCH.TAG",
        help="model name (default from the setting, e.g. wrn28_2.bacon_c10lt_n1000m4000g100_s0)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an export that was changed by hand: the old one is moved to EXPORT.old-N",
    )
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "import-usb",
        help="turn a USB / BaCon-release checkpoint into a timm export folder",
        description="Loads a USB torch.save checkpoint safely (weights_only), maps its state dict "
        "(plain WRN or the release's wrapper) and writes the folder `bacon-zoo export` writes: "
        'timm.create_model("local-dir:DIR", pretrained=True) then gives the checkpoint\'s logits.',
    )
    p.add_argument(
        "checkpoint", metavar="CKPT", help="the .pth file (a dict with model, ema_model, ...)"
    )
    p.add_argument("--arch", required=True, help="the network: wrn28_2, wrn28_8 or wrn37_2")
    p.add_argument("--num-classes", required=True, type=int, metavar="K")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder to write")
    p.add_argument(
        "--key",
        default="ema_model",
        choices=("ema_model", "model"),
        help="which state dict (default ema_model: USB evaluates the EMA)",
    )
    p.add_argument("--name", metavar="ARCH.TAG", help="model name (default ARCH.usb_<file stem>)")
    p.add_argument("--class-names", metavar="A,B,...", help="comma-separated class names")
    p.add_argument(
        "--force", action="store_true", help="replace a changed DIR (moved to DIR.old-N)"
    )
    p.set_defaults(func=run_import_usb)

    p = subparsers.add_parser(
        "import-weights",
        help="turn a foreign checkpoint (same tensors, same order as a timm model) into a timm folder",
        description="Pairs the checkpoint's tensors with timm ARCH's state dict by position, checks "
        f"every shape (the first mismatch is refused), and writes {TIMM_WEIGHTS} + {TIMM_CONFIG}: "
        f"use it as --backbone local-dir:DIR --pretrained or --pretrained-file DIR/{TIMM_WEIGHTS}.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=".pth / .pt / .bin / .safetensors file")
    p.add_argument("--arch", required=True, help="timm architecture, e.g. tf_efficientnet_lite0")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.add_argument("--key", help="the state dict's entry in the checkpoint dict, if nested")
    p.add_argument("--mean", metavar="R,G,B", help="input mean of the weights (default: ARCH's)")
    p.add_argument("--std", metavar="R,G,B", help="input std of the weights (default: ARCH's)")
    p.add_argument("--source", help="where the weights come from (recorded, shown in model cards)")
    p.add_argument("--license", help="the weights' licence (recorded, shown in model cards)")
    p.add_argument(
        "--force", action="store_true", help="replace a changed DIR (moved to DIR.old-N)"
    )
    p.set_defaults(func=run_import_weights)

    p = subparsers.add_parser(
        "push",
        help="upload an export to a Hugging Face Hub model repo",
        description="Creates the repo if needed and uploads the export; the token comes from HF_TOKEN "
        "or `hf auth login`. The local export is never modified.",
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR")
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to push to (created if needed)")
    p.add_argument(
        "--add-to-zoo", action="store_true", help="record it in model_cards/index.json as pushed"
    )
    p.set_defaults(func=run_push)

    p = subparsers.add_parser(
        "pull",
        help="download a model repo (into the HF cache or --local-dir)",
        description="Downloads with huggingface_hub's cache; prints the folder.",
    )
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument("--revision", metavar="REV")
    p.add_argument("--local-dir", metavar="DIR", help="download into DIR instead of the cache")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=run_pull)

    p = subparsers.add_parser(
        "predict",
        help="classify image files with an exported model",
        description="MODEL: an export folder, local-dir:PATH, hf-hub:ORG/NAME, ORG/NAME or a zoo tag.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--topk", type=int, default=5, help="labels to print per image (default 5)")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "zoo",
        help="list the zoo (model_cards/index.json); `zoo add EXPORT_DIR` adds an export",
        description="Without a subcommand: print the zoo table.",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=run_zoo_list)
    zsub = p.add_subparsers(dest="zoo_command", metavar="{add}")
    a = zsub.add_parser("add", help="add or update the entry of an export and copy its card")
    a.add_argument("export_dir", metavar="EXPORT_DIR")
    a.add_argument("--hub-id", metavar="ORG/NAME", help="the Hub repo it is (or will be) pushed to")
    a.add_argument("--tag", help="timm pretrained tag (default: from --hub-id or the export name)")
    a.add_argument("--pushed", action="store_true", help="mark it pushed (needs --hub-id)")
    a.set_defaults(func=run_zoo_add)


def run_export(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.export import export_run

    out = export_run(
        args.run_dir, out_dir=args.out, checkpoint=args.checkpoint, name=args.name, force=args.force
    )
    print(out)
    return 0


def run_import_usb(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.usb import import_usb

    names = [c.strip() for c in args.class_names.split(",")] if args.class_names else None
    out = import_usb(
        args.checkpoint,
        args.arch,
        args.num_classes,
        args.out,
        key=args.key,
        name=args.name,
        class_names=names,
        force=args.force,
    )
    print(out)
    return 0


def _triple(text: str | None, flag: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"{flag} '{text}' must be three numbers R,G,B, e.g. 0.5,0.5,0.5")
    return values  # type: ignore[return-value]


def run_import_weights(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.import_weights import import_weights

    out = import_weights(
        args.checkpoint, args.arch, args.out, key=args.key,
        mean=_triple(args.mean, "--mean"), std=_triple(args.std, "--std"),
        source=args.source, license=args.license, force=args.force,
    )  # fmt: skip
    print(out)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.hubio import push

    url = push(args.export_dir, args.repo_id, private=args.private, revision=args.revision)
    print(url)
    if args.add_to_zoo:
        from bacon_zoo.hub.zoo import add

        entry = add(args.export_dir, hub_id=args.repo_id, pushed=True)
        print(f"zoo: {entry['name']} -> {entry['card']}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.hubio import pull

    print(pull(args.repo_id, revision=args.revision, local_dir=args.local_dir, force=args.force))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.hubio import predict

    for path, top in zip(args.images, predict(args.model, args.images, topk=args.topk)):
        print(f"{path}: " + ", ".join(f"{label} ({100 * p:.1f}%)" for label, p in top))
    return 0


def run_zoo_list(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.zoo import format_table, load_index

    print(format_table(load_index(), markdown=args.markdown))
    return 0


def run_zoo_add(args: argparse.Namespace) -> int:
    from bacon_zoo.hub.zoo import add

    entry = add(args.export_dir, hub_id=args.hub_id, tag=args.tag, pushed=args.pushed)
    print(f"{entry['name']}: {entry['status']}, card {entry['card']}")
    return 0
