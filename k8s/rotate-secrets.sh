#!/usr/bin/env bash
# Bump the version of the Secret set in an overlay, in one step.
#
# The overlay's secrets-version.yaml gives every ExternalSecret a name suffix,
# and kustomize rewrites each Deployment/CronJob reference to match. A new
# suffix therefore means: new ExternalSecrets -> kubernetes-external-secrets
# (polling off) fetches the current values once into new Secrets -> the pod
# templates change -> one `kubectl apply` rolls the pods onto them. The old
# Secrets stay until the rollout is done (old pods still mount them).
#
# usage: k8s/rotate-secrets.sh [--overlay DIR] [--version vYYYYMMDD-HHMMSS] [--current]
set -euo pipefail

usage() {
  echo "usage: $0 [--overlay DIR] [--version vYYYYMMDD-HHMMSS] [--current]" >&2
  exit 2
}

here=$(cd "$(dirname "$0")" && pwd)
overlay="$here/overlays/eks"
version=""
show_current=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --overlay) [[ $# -ge 2 ]] || usage; overlay=$2; shift 2 ;;
    --version) [[ $# -ge 2 ]] || usage; version=$2; shift 2 ;;
    --current) show_current=true; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done

file="$overlay/secrets-version.yaml"
[[ -f "$file" ]] || { echo "no $file: not an overlay with a secrets version" >&2; exit 1; }

current=$(sed -n 's/^suffix: -\(v[-a-z0-9]*\)$/\1/p' "$file")
[[ -n "$current" ]] || { echo "$file: no 'suffix: -v…' line" >&2; exit 1; }
if $show_current; then
  echo "$current"
  exit 0
fi

[[ -n "$version" ]] || version="v$(date -u +%Y%m%d-%H%M%S)"
# Part of Secret names: lowercase letters, digits and '-' only.
if ! [[ "$version" =~ ^v[0-9a-z]([-0-9a-z]{0,30}[0-9a-z])?$ ]]; then
  echo "bad version '$version': want v followed by lowercase letters, digits, '-'" >&2
  exit 2
fi
if [[ "$version" == "$current" ]]; then
  echo "version $version is already current; a rotation needs a new name" >&2
  exit 1
fi

tmp=$(mktemp "$file.XXXXXX")
sed "s/^suffix: -$current\$/suffix: -$version/" "$file" >"$tmp"
mv "$tmp" "$file"

names=$(kubectl kustomize "$overlay" \
  | sed -n '/^kind: ExternalSecret$/,/^---$/s/^  name: \(.*\)$/\1/p')
echo "secrets version: $current -> $version"
echo "ExternalSecrets now: $(echo "$names" | tr '\n' ' ')"
cat <<NEXT
next:
  1. commit $file and apply both together:
       kubectl apply -k $overlay
  2. watch the rollout:
       kubectl -n idbase rollout status deployment/idsvc
       kubectl -n idbase rollout status deployment/gateway
  3. once it is done, remove the previous set (their Secrets go with them):
       kubectl -n idbase delete externalsecret -l idbase.io/secret-set=runtime \\
         --field-selector $(echo "$names" | sed 's/^/metadata.name!=/' | paste -sd, -)
NEXT
