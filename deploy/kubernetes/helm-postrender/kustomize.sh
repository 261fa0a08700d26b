#!/bin/sh
# Helm post-renderer that adds the etlfs sidecar to the pod of Kubecost's cost-analyzer chart.
# Helm writes the rendered chart to stdin and installs what this prints:
#   helm upgrade --install kubecost cost-analyzer --repo https://kubecost.github.io/cost-analyzer/ \
#     -n kubecost -f your-values.yaml -f deploy/kubernetes/helm-values.yaml \
#     --post-renderer deploy/kubernetes/helm-postrender/kustomize.sh
#
# It patches the Deployment named by ETLFS_KUBECOST_DEPLOYMENT (default kubecost-cost-analyzer:
# the chart names it <release>-cost-analyzer, or <release> if that contains "cost-analyzer")
# with kubecost-patch.yaml, or with kubecost-patch-dbpv.yaml when the chart's pod has the
# legacy `persistent-db` volume (persistentVolume.dbPVEnabled: the ETL directory is then
# /var/db/etl). A kustomize target that matches nothing is silently skipped, which here would
# mean no backup at all; so first it checks the rendered chart and refuses, with one line on
# stderr, exit 1 and nothing on stdout:
#   - no Deployment of that name (another release name);
#   - a rollout strategy other than Recreate (helm-values.yaml not passed: two pods would
#     mirror the same bucket prefix at once);
#   - a pod without a container that the patch gives the ETL mount (the patch would add an
#     incomplete container: aggregator and cloud-cost are in the pod only with
#     kubecostAggregator.deployMethod: singlepod).
# Needs kubectl >= 1.21 (`kubectl kustomize` with `patches`); it never contacts a cluster.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
deployment=${ETLFS_KUBECOST_DEPLOYMENT:-kubecost-cost-analyzer}

die() {
    printf 'etlfs post-renderer: %s\n' "$*" >&2
    exit 1
}

case $deployment in
'' | *[!a-z0-9.-]*) die "ETLFS_KUBECOST_DEPLOYMENT=\"$deployment\" is not a Deployment name" ;;
esac
command -v kubectl >/dev/null || die "kubectl not found (it runs kustomize; >= 1.21)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/chart.yaml"

# probe FILE WHAT TEMPLATE: kubectl's JSONPath TEMPLATE applied to each object of the YAML file
# FILE (called WHAT in a message), into $work/probe. `label --local` parses the objects offline
# (no cluster); the label it adds exists only in this output.
probe() {
    kubectl label --local --overwrite -f "$1" etlfs-probe=1 -o "jsonpath=$3" >"$work/probe" ||
        die "kubectl cannot read $2 (its message is above)"
}

# One line per object, for a Deployment: Deployment;name;strategy;volume,...;container,...
names='{range .spec.template.spec.volumes[*]}{.name},{end};'
names=$names'{range .spec.template.spec.containers[*]}{.name},{end}'
probe "$work/chart.yaml" "the rendered chart" \
    '{.kind};{.metadata.name};{.spec.strategy.type};'"$names"'{"\n"}'
deployments=$(sed -n 's/^Deployment;//p' "$work/probe")
target=$(printf '%s\n' "$deployments" | awk -F';' -v name="$deployment" '$1 == name')
if [ -z "$target" ]; then
    found=$(printf '%s\n' "$deployments" | awk -F';' 'NF { printf "%s%s", sep, $1; sep = ", " }')
    die "no Deployment \"$deployment\" in the rendered chart (found: ${found:-no Deployment});" \
        "set ETLFS_KUBECOST_DEPLOYMENT to your release's <release>-cost-analyzer"
fi
IFS=';' read -r _ strategy volumes containers <<EOF
$target
EOF

[ "$strategy" = Recreate ] ||
    die "Deployment \"$deployment\" rolls out with strategy" \
        "${strategy:-RollingUpdate (the default)}, not Recreate: two pods would mirror the" \
        "same bucket prefix at once; pass deploy/kubernetes/helm-values.yaml" \
        "(kubecostDeployment.deploymentStrategy)"

case ",$volumes" in
*,persistent-db,*) patch=kubecost-patch-dbpv.yaml ;;
*) patch=kubecost-patch.yaml ;;
esac

probe "$here/$patch" "$patch" '{range .spec.template.spec.containers[*]}{.name} {end}'
read -r consumers <"$work/probe" || true
missing=
for c in $consumers; do
    case ",$containers" in
    *,"$c",*) ;;
    *) missing="$missing${missing:+, }$c" ;;
    esac
done
listed=$(printf '%s' "$containers" | sed 's/,$//; s/,/, /g')
[ -z "$missing" ] ||
    die "Deployment \"$deployment\" lacks the container(s) $missing, which $patch gives the" \
        "ETL mount (its containers: $listed); aggregator and" \
        "cloud-cost run in this pod only with kubecostAggregator.deployMethod: singlepod" \
        "(helm-values.yaml); otherwise remove them from $patch"

# kustomize's target name is an anchored regular expression: escape the dots of the name.
cp "$here/$patch" "$work/"
cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - chart.yaml
patches:
  - path: $patch
    target:
      kind: Deployment
      name: $(printf '%s' "$deployment" | sed 's/\./\\./g')
EOF
kubectl kustomize "$work" >"$work/out.yaml"

# What kustomize made must hold the sidecar (a last guard: it says nothing when it skips).
probe "$work/out.yaml" "kustomize's output" \
    '{.kind};{.metadata.name};{range .spec.template.spec.initContainers[*]}{.name},{end}{"\n"}'
sidecar=$(awk -F';' -v name="$deployment" '$1 == "Deployment" && $2 == name { print $3 }' \
    "$work/probe")
case ",$sidecar" in
*,etlfs,*) ;;
*) die "kustomize added no etlfs sidecar to Deployment \"$deployment\"" ;;
esac
cat "$work/out.yaml"
