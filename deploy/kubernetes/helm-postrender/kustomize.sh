#!/bin/sh
# Helm post-renderer: Helm writes the rendered chart to stdin and installs what this prints.
#   helm upgrade --install kubecost cost-analyzer --repo https://kubecost.github.io/cost-analyzer/ \
#     -n kubecost -f deploy/kubernetes/helm-values.yaml \
#     --post-renderer deploy/kubernetes/helm-postrender/kustomize.sh
# Needs kubectl (>= 1.14, for `kubectl kustomize`) or replace the last line by `kustomize build`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/kustomization.yaml" "$here/kubecost-patch.yaml" "$work/"
cat >"$work/chart.yaml"
kubectl kustomize "$work"
