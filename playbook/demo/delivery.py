"""Upload a generated demo company to the landing bucket with plain boto3, in the order a company sends it.

The endpoint is the environment's business (AWS_ENDPOINT_URL locally, set when the local target is resolved).
Clean files go first; re-sent files and later versions of a key follow, so a changed re-send is a new version.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from playbook.errors import PlaybookError

DEFECTS_FILE = "defects.json"
CONTENT_TYPES = {".csv": "text/csv",
                 ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def delivery_plan(out_dir: Path | str) -> list[tuple[str, Path]]:
    """(key, local file) in delivery order, from the manifest and defects.json of a generated directory."""
    from playbook.demo.manifest import MANIFEST_FILE

    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise PlaybookError(f"{out / MANIFEST_FILE} not found: run `playbook demo-data --out {out}` first") from None
    defects = json.loads((out / DEFECTS_FILE).read_text()) if (out / DEFECTS_FILE).exists() else {}
    missing = set(defects.get("missing", []))
    plan = [(f["key"], out / f["key"]) for f in manifest["files"] if f["key"] not in missing]
    plan += [(d["key"], out / d["path"]) for d in defects.get("later_deliveries", [])]
    absent = [str(p) for _, p in plan if not p.is_file()]
    if absent:
        raise PlaybookError(f"{len(absent)} file(s) of the manifest are missing, e.g. {absent[0]}: generate again")
    return plan


def deliver(out_dir: Path | str, bucket: str, prefix_filter: str | None = None) -> list[str]:
    """Upload every delivery to its key in `bucket`; returns the keys in upload order."""
    import boto3
    from botocore.exceptions import ClientError

    plan = [(k, p) for k, p in delivery_plan(out_dir) if not prefix_filter or k.startswith(prefix_filter)]
    s3 = boto3.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        raise PlaybookError(f"bucket {bucket!r} is not reachable ({exc.response['Error'].get('Code')}): "
                            "provision the landing bucket first") from None

    def put(item: tuple[str, Path]) -> str:
        key, path = item
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(),
                      ContentType=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))
        return key

    # the first delivery of each key can go in parallel; a key's later versions must follow it
    seen: set[str] = set()
    first, later = [], []
    for key, path in plan:
        (later if key in seen else first).append((key, path))
        seen.add(key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        uploaded = list(pool.map(put, first))
    uploaded += [put(item) for item in later]
    return uploaded
