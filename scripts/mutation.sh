#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that decide the numbers: typing, the loader, the sources, the
# accuracy checks (pyproject.toml [tool.mutmut]: about 9,600 mutants). A mutant that survives runs every
# test that reaches its function, minutes for the loader's, so the whole set takes days on two cores: name
# the mutants of one module at a time. Not part of `make test`.
#
# mutmut imports the code it mutates by its file path, so it runs in .mutation/, where lambda_src/pipeline
# is the top-level package `pipeline` as the tests import it. One local stack serves every test session
# mutmut starts (tests/conftest.py: PLAYBOOK_TEST_STACK_DIR), emptied for each. Arguments go to
# `mutmut run`, e.g. a mutant name pattern: scripts/mutation.sh "pipeline.reading*". `mutmut results` and `mutmut show NAME` work in
# .mutation/ afterwards; the score is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/.mutation
mkdir -p "$work"
for part in pipeline:lambda_src/pipeline playbook:playbook tests:tests playbook.yaml:playbook.yaml examples:examples \
            lambda_src:lambda_src; do
  ln -sfn "$root/${part#*:}" "$work/${part%%:*}"
done
cp pyproject.toml "$work/pyproject.toml"

export PLAYBOOK_STATE_DIR="$work/stack" PLAYBOOK_MOTO_PORT="${PLAYBOOK_MOTO_PORT:-24666}" \
       PLAYBOOK_PG_PORT="${PLAYBOOK_PG_PORT:-24632}" AWS_DEFAULT_REGION=eu-west-2
export PLAYBOOK_TEST_STACK_DIR="$PLAYBOOK_STATE_DIR"
rm -rf "$PLAYBOOK_STATE_DIR"  # a new stack: its database template is migrated by the first session
"$root/.venv/bin/playbook" local up >/dev/null
trap '"$root/.venv/bin/playbook" local down --delete-data >/dev/null' EXIT

cd "$work"
"$root/.venv/bin/mutmut" run --max-children 1 "$@" || true
"$root/.venv/bin/mutmut" export-cicd-stats >/dev/null
"$root/.venv/bin/python" - <<'PY'
import json
stats = json.load(open("mutants/mutmut-cicd-stats.json"))
killed = stats.get("killed", 0) + stats.get("timeout", 0) + stats.get("segfault", 0)
judged = killed + stats.get("survived", 0)
print(json.dumps(stats))
print(f"mutation score: {killed} of {judged} mutants killed ({killed / max(judged, 1):.1%}); "
      f"{stats.get('no_tests', 0)} not reached by any test; survivors: mutmut results (in .mutation/)")
PY
