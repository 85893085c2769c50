"""The commands for a user's own sensors: ``data import``, ``data list``, ``train``."""

from __future__ import annotations

import argparse

from control.cli_ops import config_of
from settings.models import ModelDeclaration


def declared_model(args: argparse.Namespace) -> ModelDeclaration:
    """``--model`` (default: ``registry.model_name``) as declared in the configuration."""
    cfg = config_of(args)
    name = args.model or cfg.registry.model_name
    if name not in cfg.models:
        declared = ", ".join(cfg.models) or "none"
        raise SystemExit(f"sensorloop: models.{name} is not declared in the configuration (declared: {declared}); "
                         "add a [models.<name>] table with channels, sample_rate_hz, window, stride and classes")
    return cfg.models[name]


def parse_label_map(text: str) -> dict[str, str]:
    """``0=walk,1=freeze`` as ``{"0": "walk", "1": "freeze"}``.

    >>> parse_label_map("0=walk, 1=freeze")
    {'0': 'walk', '1': 'freeze'}
    """
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise SystemExit(f"sensorloop: --label-map {bad[0]!r}: expected value=class")
    return dict(tuple(part.strip() for part in p.split("=", 1)) for p in pairs)


def cmd_data_import(args: argparse.Namespace) -> int:
    """Check files against a declared model and store them as a dataset (all or nothing)."""
    import time

    from recordings.importer import import_files
    from recordings.store import DatasetStore

    model = declared_model(args)
    dataset_id = args.dataset or f"{model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = DatasetStore(config_of(args).data.dir)
    try:
        report = import_files(args.files, model, store, dataset_id, device=args.device,
                              label_column=args.label_column, label_map=parse_label_map(args.label_map or ""),
                              time_unit=args.time_unit, skip_bad_rows=args.skip_bad_rows,
                              ignore_columns=[c.strip() for c in (args.ignore_columns or "").split(",") if c.strip()])
    except (FileExistsError, ValueError) as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    print(report.summary())
    return 0 if report.imported else 2


def cmd_data_list(args: argparse.Namespace) -> int:
    from recordings.store import DatasetStore

    store = DatasetStore(config_of(args).data.dir)
    names = store.list()
    if not names:
        print(f"no datasets under {store.root}")
    for name in names:
        m = store.manifest(name)
        samples = sum(d["samples"] for d in m["devices"].values())
        per_class = ", ".join(f"{c} {n}" for c, n in m["samples_per_class"].items())
        print(f"{name}: model {m['model_name']}, {len(m['devices'])} device(s), {samples} samples "
              f"({per_class}), sha256:{m['fingerprint'][:12]}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a version of a declared model on an imported dataset and publish it."""
    from model.dataset_training import train_from_dataset
    from model.evaluation import format_report
    from model.registry import ModelRegistry
    from recordings.store import DatasetStore

    model = declared_model(args)
    cfg = config_of(args)
    try:
        dataset = DatasetStore(cfg.data.dir).load(args.dataset)
    except FileNotFoundError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    if dataset.manifest["model_name"] != model.name:
        raise SystemExit(f"sensorloop: dataset {args.dataset} was imported for model {dataset.manifest['model_name']}, "
                         f"not {model.name}")
    try:
        result = train_from_dataset(ModelRegistry(cfg.registry.path), model.spec_dict(), model.stride, dataset,
                                    epochs=args.epochs, seed=args.seed, int8_min_agreement=cfg.int8_check(model.name),
                                    augment_copies=args.augment)
    except ValueError as exc:
        raise SystemExit(f"sensorloop: {exc}") from None
    print(f"{result.split}; trained on {result.train_windows} windows in {result.seconds:.1f}s")
    print(format_report(result.report))
    print(f"published {model.name} v{result.metadata.version} ({cfg.registry.path})")
    return 0


def add_data_commands(sub) -> None:
    p = sub.add_parser("data", help="your own recordings: import (CSV, Parquet, .npz) and list datasets")
    q = p.add_subparsers(dest="data_command", required=True)
    r = q.add_parser("import", help="check files against a declared model and store them as a dataset "
                                    "(nothing is imported if anything is wrong, unless --skip-bad-rows)")
    r.add_argument("files", nargs="+", help="CSV (timestamp, device, <channels>, label), .parquet or .npz")
    r.add_argument("--model", default=None, help="a [models.<name>] of the configuration (default: registry.model_name)")
    r.add_argument("--dataset", default=None, help="the dataset's id (default: <model>-<date-time>)")
    r.add_argument("--device", default=None, help="the device of files without a device column")
    r.add_argument("--label-column", default="label")
    r.add_argument("--label-map", default=None, help="file values to class names: 0=walk,1=freeze")
    r.add_argument("--time-unit", choices=["ms", "s", "us", "ns"], default=None,
                   help="unit of integer timestamps (default: ms; decimals are seconds)")
    r.add_argument("--ignore-columns", default=None, help="comma-separated columns that are not channels")
    r.add_argument("--skip-bad-rows", action="store_true", help="import the good rows; list the refused ones")
    r.set_defaults(func=cmd_data_import)
    q.add_parser("list", help="imported datasets").set_defaults(func=cmd_data_list)

    p = sub.add_parser("train", help="train a version of a declared model on an imported dataset and publish it")
    p.add_argument("--model", default=None, help="default: registry.model_name")
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--augment", type=int, default=0, metavar="N",
                   help="also train on N augmented copies of each window per epoch (gain, offset, speed, noise): "
                        "for people or sensors the dataset does not have")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--registry", default=None)
    p.set_defaults(func=cmd_train)
