"""Mutation samples and scores for scripts/mutation.sh, read from mutmut's own records (mutants/*.meta).

    python scripts/mutation_score.py sample N SEED > names   # N mutants, each module in proportion to its count
    python scripts/mutation_score.py score [names]           # killed / judged, per module, with survivors

A sample is drawn without replacement from every mutant of the modules `[tool.mutmut] only_mutate` names,
seeded, so a run can be repeated; its score is an estimate of the whole set's, quoted with a 95% Wilson
interval. Run in .mutation/ (where mutmut keeps its records).
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault"}
JUDGED = KILLED | {"survived"}


def all_mutants() -> dict[str, int | None]:
    """{mutant name: mutmut's exit code for it (None: not run yet)}, every module."""
    found: dict[str, int | None] = {}
    for meta in sorted(Path("mutants").rglob("*.meta")):
        found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def sample(size: int, seed: int) -> list[str]:
    names = sorted(all_mutants())
    by_module: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_module[module_of(name)].append(name)
    # each module's share by largest remainder, so the sample's make-up is the whole set's
    quotas = {m: size * len(ms) / len(names) for m, ms in by_module.items()}
    counts = {m: int(q) for m, q in quotas.items()}
    for m in sorted(quotas, key=lambda m: quotas[m] - counts[m], reverse=True)[: size - sum(counts.values())]:
        counts[m] += 1
    rng = random.Random(seed)  # noqa: S311 - a sample that can be drawn again, not a secret
    return sorted(n for m, ms in by_module.items() for n in rng.sample(ms, min(counts[m], len(ms))))


def wilson(killed: int, judged: int, z: float = 1.96) -> tuple[float, float]:
    if not judged:
        return 0.0, 1.0
    p = killed / judged
    centre = (p + z * z / (2 * judged)) / (1 + z * z / judged)
    half = z * math.sqrt(p * (1 - p) / judged + z * z / (4 * judged * judged)) / (1 + z * z / judged)
    return centre - half, centre + half


def score(names: list[str] | None) -> int:
    codes = all_mutants()
    chosen = names if names else [n for n, code in codes.items() if code is not None]
    statuses = {n: status_by_exit_code[codes[n]] if codes.get(n) is not None else "not checked" for n in chosen}
    per_module: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        per_module[module_of(name)][status] += 1
    total: Counter = Counter(statuses.values())
    print(f"{'module':<36} {'killed':>7} {'judged':>7} {'score':>7}  other")
    for module, c in sorted(per_module.items()):
        killed, judged = sum(c[s] for s in KILLED), sum(c[s] for s in JUDGED)
        other = ", ".join(f"{s} {n}" for s, n in sorted(c.items()) if s not in JUDGED)
        print(f"{module:<36} {killed:>7} {judged:>7} {killed / max(judged, 1):>7.1%}  {other}")
    killed, judged = sum(total[s] for s in KILLED), sum(total[s] for s in JUDGED)
    low, high = wilson(killed, judged)
    print(f"mutation score: {killed} of {judged} judged mutants killed ({killed / max(judged, 1):.1%}; 95% interval "
          f"{low:.1%} to {high:.1%}); " + ", ".join(f"{s} {n}" for s, n in sorted(total.items()) if s not in JUDGED))
    survivors = sorted(n for n, s in statuses.items() if s == "survived")
    Path("survivors.txt").write_text("".join(f"{n}\n" for n in survivors))
    print(f"{len(survivors)} survivors in .mutation/survivors.txt (`mutmut show NAME` in .mutation/)")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["sample"]:
        print("\n".join(sample(int(argv[1]), int(argv[2]))))
        return 0
    if argv[:1] == ["score"]:
        names = Path(argv[1]).read_text().split() if len(argv) > 1 else None
        return score(names)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
