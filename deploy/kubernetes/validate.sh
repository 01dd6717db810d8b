#!/usr/bin/env bash
# Checks the Kubernetes example in this directory, offline:
#   1. yamllint: YAML syntax, and no key written twice (a YAML parser keeps the last one
#      silently, so a manifest could lose a setting without any other check noticing).
#   2. kubernetes-validate --strict: every manifest against the Kubernetes API's JSON
#      schemas (bundled in the package) for each version in K8S_VERSIONS: required
#      fields, types, and no unknown field (a misspelt readinessProbe fails).
#   3. kustomization.yaml lists every manifest, and (when kubectl is there) builds.
#   4. `sluice check` on the sluice.toml held by configmap.yaml.
#
# Usage: deploy/kubernetes/validate.sh [SLUICE]
#   SLUICE: a sluice binary to run `check` with; default `cargo run --release --quiet --`.
# Needs yamllint and kubernetes-validate on PATH, and the python3 on PATH able to import
# yaml (PyYAML, which kubernetes-validate depends on):
#   python3 -m venv ~/.cache/k8s-validate && ~/.cache/k8s-validate/bin/pip install \
#       kubernetes-validate==1.37.0 yamllint==1.38.0
#   PATH=~/.cache/k8s-validate/bin:$PATH deploy/kubernetes/validate.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# 1.30: the oldest release where preStop's sleep action is on by default
# (deployment.yaml, app-deployment.yaml). 1.37: the newest the pinned tool knows.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}

if (($# > 0)); then
    sluice=("$1")
    # A relative path is the caller's: make it absolute before the cd below.
    if [[ $1 == */* && $1 != /* ]]; then
        sluice=("$PWD/$1")
    fi
else
    sluice=(cargo run --release --quiet --manifest-path "$here/../../Cargo.toml" --)
fi
cd "$here"

for tool in yamllint kubernetes-validate python3; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "validate.sh: $tool not found (see the comment at the top of this script)" >&2
        exit 2
    }
done

manifests=()
for f in *.yaml; do
    [[ $f == kustomization.yaml ]] || manifests+=("$f")
done

echo "+ yamllint"
yamllint --strict -d '{extends: default, rules: {document-start: disable, line-length: {max: 100}}}' .

for v in $K8S_VERSIONS; do
    echo "+ kubernetes-validate --strict -k $v"
    kubernetes-validate --strict --quiet -k "$v" "${manifests[@]}"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Reads the manifests with PyYAML: checks that the kustomization names each of them,
# and writes the ConfigMap's sluice.toml out for `sluice check`.
python3 - "$work/sluice.toml" "${manifests[@]}" <<'PY'
import sys, yaml

out, manifests = sys.argv[1], sys.argv[2:]
with open("kustomization.yaml") as f:
    listed = yaml.safe_load(f).get("resources", [])
problems = [f"kustomization.yaml: resources does not list {name}"
            for name in sorted(set(manifests) - set(listed))]
problems += [f"kustomization.yaml: resources lists {name}, which is not here"
             for name in sorted(set(listed) - set(manifests))]
if problems:
    sys.exit("\n".join(problems))

toml = None
for name in manifests:
    with open(name) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "sluice-config":
                toml = doc["data"]["sluice.toml"]
if toml is None:
    sys.exit("no ConfigMap sluice-config with a sluice.toml key")
with open(out, "w") as f:
    f.write(toml)
PY
echo "kustomization.yaml lists all ${#manifests[@]} manifests"

if command -v kubectl >/dev/null 2>&1; then
    echo "+ kubectl kustomize"
    kubectl kustomize . >/dev/null
fi

# Outside the cluster, a warning that app-headless does not resolve is expected.
echo "+ sluice check (sluice.toml from configmap.yaml)"
if ! "${sluice[@]}" check --config "$work/sluice.toml"; then
    first=$(grep -n -m 1 'sluice.toml: |' configmap.yaml | cut -d: -f1)
    echo "validate.sh: line N of sluice.toml above is line $first+N of configmap.yaml" >&2
    exit 1
fi
echo "deploy/kubernetes: all checks passed"
