"""The demo company's history in the landing bucket the stack outputs name, delivered once.

A second call with the same arguments generates the same bytes and finds every delivery already in the
bucket (each key holds a version with the file's MD5 ETag), so it uploads nothing and the bucket keeps its
versions: the backfill that follows then answers `already_loaded` for every object.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any


def _landed_etags(s3, bucket: str) -> dict[str, set[str]]:
    etags: dict[str, set[str]] = defaultdict(set)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            etags[version["Key"]].add(version["ETag"].strip('"'))
    return etags


def land_demo_company(target, out_dir: str | Path | None = None, *, years: int = 3,
                      clients: int = 300, defects: str | list[str] | None = None, seed: int | None = None,
                      end: str | date | None = None) -> dict[str, Any]:
    """Generate the demo company and deliver what the target's landing bucket does not hold yet; a summary."""
    import boto3

    from playbook.demo import deliver, generate
    from playbook.demo.company import DEFAULT_END, DEFAULT_SEED
    from playbook.demo.delivery import delivery_plan
    from playbook.settings import local_settings

    outputs = target.outputs(parts=("pipeline",))
    bucket = outputs["LandingBucketName"]
    out = Path(out_dir) if out_dir else local_settings().state_dir / "demo"
    end_day = date.fromisoformat(end) if isinstance(end, str) else (end or DEFAULT_END)
    manifest = generate(out, seed=DEFAULT_SEED if seed is None else seed, end=end_day, years=years,
                        clients=clients, defects=defects or ())
    plan = delivery_plan(out)
    landed = _landed_etags(boto3.client("s3"), bucket)
    missing = [key for key, path in plan
               if hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest() not in landed.get(key, set())]
    uploaded = deliver(out, bucket) if missing else []
    return {"bucket": bucket, "company": manifest.company, "files": len(manifest.files), "deliveries": len(plan),
            "uploaded": len(uploaded), "not_yet_landed": len(missing),
            "defects": len(manifest.defects), "out_dir": str(out), "years": years, "clients": clients}
