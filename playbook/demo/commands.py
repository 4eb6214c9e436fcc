"""`playbook demo-data`: generate the demo company's deliveries and, given a bucket, upload them."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path

from playbook.settings import local_settings


def cmd_demo_data(args: argparse.Namespace) -> int:
    import time

    from playbook.demo import deliver, generate
    from playbook.errors import PlaybookError

    out = Path(args.out) if args.out else local_settings().state_dir / "demo"
    started = time.perf_counter()
    try:
        manifest = generate(out, seed=args.seed, end=date.fromisoformat(args.end), years=args.years,
                            clients=args.clients, defects=args.defects or ())
    except ValueError as exc:
        raise PlaybookError(str(exc)) from None
    print(f"{manifest.company}: {len(manifest.files)} files in {out} ({time.perf_counter() - started:.1f} s)")
    for name, s in manifest.sources.items():
        money = f", {s['amount_sum']} GBP" if s["amount_sum"] is not None else ""
        served = "  through its API" if s.get("api") else f"{s['files']:>4} files"
        print(f"  {name:<16} {served} {s['rows']:>8} rows{money}")
    if manifest.defects:
        print(f"  defects: {len(manifest.defects)} injected ({out / 'defects.json'})")
    if args.bucket:
        from playbook.targets import resolve_target

        resolve_target(args.target)  # boto3 pointed at the local stack, or AWS's preflight
        keys = deliver(out, args.bucket, prefix_filter=args.prefix)
        print(f"uploaded {len(keys)} objects to s3://{args.bucket}/")
    return 0


def register_commands(subparsers) -> None:
    p = subparsers.add_parser("demo-data", help="generate the demo company's files (and upload them to a bucket)")
    p.add_argument("--out", help="output directory (default: .state/demo/)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--end", default="2026-11-30", help="last day of the history (default 2026-11-30)")
    p.add_argument("--years", type=int, default=3, help="years of history (default 3)")
    p.add_argument("--clients", type=int, default=300, help="number of clients (default 300)")
    p.add_argument("--defects", help="seeded defects: all, or a comma-separated list of kinds")
    p.add_argument("--bucket", help="upload every file to this S3 bucket after generating")
    p.add_argument("--prefix", help="upload only keys starting with this prefix")
    p.add_argument("--target", choices=("local", "aws"), default="local",
                   help="local: point boto3 at the running local stack; aws: your AWS profile and region")
    p.set_defaults(func=cmd_demo_data)
