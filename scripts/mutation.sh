#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules that decide the numbers: typing, the loader, the sources, the
# accuracy checks (pyproject.toml [tool.mutmut]: about 9,600 mutants). A mutant that survives runs every
# test that reaches its function, minutes for the loader's, so the whole set takes days on two cores: name
# the mutants of one module at a time. Not part of `make test`.
#
# mutmut imports the code it mutates by its file path, so it runs in .mutation/, where lambda_src/pipeline
# is the top-level package `pipeline` as the tests import it. One local stack serves every test session
# mutmut starts (tests/conftest.py: PLAYBOOK_TEST_STACK_DIR), emptied for each. Arguments go to
# `mutmut run`, e.g. a mutant name pattern: scripts/mutation.sh "pipeline.reading*"; SAMPLE=N instead judges a
# seeded random sample of N mutants across every module (SEED to draw another), the way the score is estimated
# in hours rather than days (scripts/mutation_score.py). `mutmut results` and `mutmut show NAME` work in
# .mutation/ afterwards; the score per module, and the survivors, are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/.mutation
mkdir -p "$work"
# copies, not links: a run judges the tree as it was when it started, whatever is edited while it runs (a test
# changed meanwhile would otherwise be run against code mutmut copied before the change)
for part in pipeline:lambda_src/pipeline playbook:playbook tests:tests playbook.yaml:playbook.yaml examples:examples infra:infra \
            lambda_src:lambda_src; do
  rm -rf "${work:?}/${part%%:*}"
  cp -R "$root/${part#*:}" "$work/${part%%:*}"
done
cp pyproject.toml "$work/pyproject.toml"

export PLAYBOOK_STATE_DIR="$work/stack" PLAYBOOK_MOTO_PORT="${PLAYBOOK_MOTO_PORT:-24666}" \
       PLAYBOOK_PG_PORT="${PLAYBOOK_PG_PORT:-24632}" AWS_DEFAULT_REGION=eu-west-2
export PLAYBOOK_TEST_STACK_DIR="$PLAYBOOK_STATE_DIR"
rm -rf "$PLAYBOOK_STATE_DIR"  # a new stack: its database template is migrated by the first session
"$root/.venv/bin/playbook" local up >/dev/null
trap '"$root/.venv/bin/playbook" local down --delete-data >/dev/null' EXIT

cd "$work"
# mutmut runs the tests from its copy, mutants/: the tests that serve an API description find Prism there
mkdir -p mutants && ln -sfn "$root/node_modules" mutants/node_modules
if [[ -n "${SAMPLE:-}" ]]; then
  # a seeded random sample of the whole set (each module in proportion), scored with its 95% interval
  if ! compgen -G "mutants/pipeline/*.meta" >/dev/null; then  # mutmut makes its records at its first run
    "$root/.venv/bin/mutmut" run --max-children 1 "pipeline.money.x_minor_digits__mutmut_1" || true
  fi
  "$root/.venv/bin/python" "$root/scripts/mutation_score.py" sample "$SAMPLE" "${SEED:-1}" > sample.txt
  # shellcheck disable=SC2046
  "$root/.venv/bin/mutmut" run --max-children 1 $(cat sample.txt) || true
  "$root/.venv/bin/python" "$root/scripts/mutation_score.py" score sample.txt
else
  "$root/.venv/bin/mutmut" run --max-children 1 "$@" || true
  "$root/.venv/bin/python" "$root/scripts/mutation_score.py" score
fi
