#!/usr/bin/env bash
# Offline checks of the deployment: k8s/ manifests, the Dockerfile, the GitHub
# workflows, the secrets-rotation script and e2e/kind/run.sh (no cluster).
#
#   yamllint -> render every kustomization -> strict schema validation for the
#   target Kubernetes versions -> Secret references resolve -> hardening
#   properties (tools/hardening.py) -> checkov (skips
#   only from checkov-skips.txt) -> Falco rule shape -> rotation bump ->
#   kind script rendering and argument checks -> shellcheck.
#
# Tools live in a cached virtualenv (${IDBASE_VENV:-~/.cache/idbase/k8s-venv}),
# created from requirements.txt when missing or when requirements.txt changes.
# Ends with one line "k8s-check: N passed, N failed".
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
k8s="$root/k8s"
venv=${IDBASE_VENV:-$HOME/.cache/idbase/k8s-venv}
# Oldest supported (kind's default node images, EKS extended support) and the
# version production runs.
kube_versions=${IDBASE_KUBE_VERSIONS:-1.30.0 1.33.0}

out=$(mktemp -d "${TMPDIR:-/tmp}/idbase-k8s-check.XXXXXX")
trap 'rm -rf "$out"' EXIT

passed=0
failed=0
failures=()
# check NAME CMD...: runs CMD, output to $out/log/NAME, reported with timing.
check() {
  local name=$1; shift
  local start=$SECONDS
  mkdir -p "$out/log"
  if "$@" >"$out/log/$name" 2>&1; then
    passed=$((passed + 1))
    printf 'ok    %-34s %3ss\n' "$name" $((SECONDS - start))
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %-34s %3ss\n' "$name" $((SECONDS - start))
    sed 's/^/      /' "$out/log/$name" | tail -n 60
  fi
}

ensure_venv() {
  local want stamp="$venv/.requirements.sha256"
  want=$(sha256sum "$k8s/requirements.txt" | cut -d' ' -f1)
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  echo "k8s-check: installing tools into $venv (once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --disable-pip-version-check -q --upgrade pip
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$k8s/requirements.txt"
  echo "$want" >"$stamp"
}
ensure_venv
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"

# --- lint and render ---------------------------------------------------------
yaml_dirs=("$k8s" "$root/e2e/kind")
[[ -d "$root/.github" ]] && yaml_dirs+=("$root/.github")
check yamllint yamllint --strict -c "$k8s/.yamllint.yaml" "${yaml_dirs[@]}"

render() { kubectl kustomize "$k8s/$1" >"$out/$2.yaml"; }
check render-base render base base
check render-eks render overlays/eks eks
check render-kind render overlays/kind kind
check render-falco render falco falco

versions=()
for v in $kube_versions; do versions+=(--kube-version "$v"); done
check validate-schemas "$py" "$k8s/tools/validate.py" "${versions[@]}" \
  "$out/base.yaml" "$out/eks.yaml" "$out/kind.yaml" "$out/falco.yaml"

# On EKS every Secret a pod uses must come from an ExternalSecret in the
# same render (and carry its version suffix).
check eks-secret-refs "$py" "$k8s/tools/secret_refs.py" "$out/eks.yaml"

# Trusted proxies, database TLS, what the public ingress routes, which pods
# hold the signing keys, and README's sizing table against the manifests.
check hardening "$py" "$k8s/tools/hardening.py" "$out/eks.yaml" "$out/kind.yaml" "$k8s/README.md"

# --- checkov -------------------------------------------------------------------
# skips SCOPE: the check ids from checkov-skips.txt that apply to SCOPE.
skips() {
  "$py" - "$k8s/checkov-skips.txt" "$1" <<'PY'
import re, sys
path, scope = sys.argv[1], sys.argv[2]
ids, bad = [], []
scopes = {"eks", "kind", "dockerfile", "github"}
for n, line in enumerate(open(path, encoding="utf-8"), 1):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    m = re.fullmatch(r"(CKV2?_[A-Z0-9]+_\d+)\s{2,}(?:\[([a-z,]+)\]\s+)?(.{40,})", line)
    if not m or (m.group(2) and not set(m.group(2).split(",")) <= scopes):
        bad.append(f"{path}:{n}: want `CKV_ID  [scope] reason` with a real reason")
        continue
    if not m.group(2) or scope in m.group(2).split(","):
        ids.append(m.group(1))
if bad:
    sys.exit("\n".join(bad))
print(",".join(ids))
PY
}
check checkov-skips-format skips eks

checkov_run() {
  local scope=$1; shift
  local ids
  ids=$(skips "$scope")
  checkov --quiet --compact --skip-download ${ids:+--skip-check "$ids"} "$@"
}
check checkov-eks checkov_run eks --framework kubernetes -f "$out/eks.yaml"
check checkov-kind checkov_run kind --framework kubernetes -f "$out/kind.yaml"
check checkov-dockerfile checkov_run dockerfile --framework dockerfile -f "$root/Dockerfile"
if [[ -d "$root/.github/workflows" ]]; then
  check checkov-github checkov_run github --framework github_actions -d "$root/.github"
fi

# --- Falco rule ------------------------------------------------------------------
falco_rule() {
  "$py" - "$k8s/falco/idbase-exec-audit.yaml" "$out/falco.yaml" <<'PY'
import sys, yaml
rules = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
rule = next(r for r in rules if "rule" in r)
fields = ["%proc.cmdline", "%proc.pid", "%user.name", "%k8s.ns.name", "%k8s.pod.name",
          "%container.name", "%container.image.repository", "%proc.pname"]
missing = [f for f in fields if f not in rule["output"]]
assert not missing, f"output lacks {missing}"
assert "idbase_exec" in rule["condition"] and "k8s.ns.name" in rule["condition"], rule["condition"]
macro = next(r for r in rules if r.get("macro") == "idbase_exec")
assert "execve" in macro["condition"], macro
cm = yaml.safe_load(open(sys.argv[2], encoding="utf-8"))
assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "falco", cm["metadata"]
assert yaml.safe_load(cm["data"]["idbase-exec-audit.yaml"]) == rules
print("rule", rule["rule"], "logs", " ".join(fields))
PY
}
check falco-rule falco_rule

# --- secrets rotation --------------------------------------------------------------
rotation() {
  local copy="$out/rotation"
  cp -r "$k8s" "$copy"
  local before after
  before=$("$copy/rotate-secrets.sh" --current)
  "$copy/rotate-secrets.sh" --version v29991231-235959
  after=$("$copy/rotate-secrets.sh" --current)
  [[ "$before" != "$after" && "$after" == v29991231-235959 ]] || { echo "version did not move: $before -> $after"; return 1; }
  kubectl kustomize "$copy/overlays/eks" >"$out/rotated.yaml"
  # Every reference resolves, and only to the new names.
  "$py" "$k8s/tools/secret_refs.py" "$out/rotated.yaml" | tee "$out/rotated-refs"
  grep -q -- "-$after\$" "$out/rotated-refs"
  if grep -- "-$before" "$out/rotated.yaml"; then echo "old version still referenced"; return 1; fi
  # The same version twice is refused: a rotation needs new names.
  if "$copy/rotate-secrets.sh" --version "$after"; then echo "reused version accepted"; return 1; fi
  if "$copy/rotate-secrets.sh" --version BAD_NAME; then echo "bad version accepted"; return 1; fi
  # Nothing but the version file changed.
  diff -r "$k8s" "$copy" | grep -v '^[<>-]\|^[0-9]' | grep -v "secrets-version.yaml" && return 1
  return 0
}
check rotation-bump rotation

# --- e2e/kind/run.sh without a cluster -------------------------------------------
kind_render() {
  local work="$out/kind-run"
  "$root/e2e/kind/run.sh" --render-only --work-dir "$work"
  cmp "$work/manifests.yaml" "$out/kind.yaml"
  "$py" "$k8s/tools/secret_refs.py" "$work/manifests.yaml" "$work/secrets.yaml"
  "$py" - "$work" <<'PY'
import base64, hashlib, json, pathlib, sys, tomllib
work = pathlib.Path(sys.argv[1])
creds = json.loads((work / "credentials.json").read_text())
clients = tomllib.loads((work / "clients.toml").read_text())["client"]
assert sorted(creds["clients"]) == ["internal", "mobile", "web"] and creds["admin_token"]
for c in clients:
    token = creds["clients"][c["class"]]
    assert hashlib.sha256(token.encode()).hexdigest() == c["token_sha256"], c
keys = sorted(p.name for p in (work / "keys").iterdir())
assert keys[0] == "blind-index.key" and keys[1].startswith("pii-k") and keys[2].startswith("signing-k"), keys
for k in keys:
    assert len(base64.b64decode((work / "keys" / k).read_text())) == 32, k
for f in ("credentials.json", "clients.toml", "secrets.yaml"):
    assert (work / f).stat().st_mode & 0o077 == 0, f"{f} is readable by others"
print("tokens match their hashes; keys are 32 bytes; files are private")
PY
}
check kind-render-only kind_render

kind_dry_run() {
  "$root/e2e/kind/run.sh" --dry-run --work-dir "$out/kind-dry" --cluster ci-test --gateway-port 28080 >"$out/kind-plan"
  cat "$out/kind-plan"
  grep -q 'kind create cluster --name ci-test' "$out/kind-plan"
  grep -q 'kind load docker-image idbase:kind --name ci-test' "$out/kind-plan"
  grep -q 'cert-manager/releases/download/v[0-9.]*/cert-manager.yaml' "$out/kind-plan"
  grep -q 'port-forward svc/gateway 28080:80' "$out/kind-plan"
  grep -q 'cargo test --locked --test blackbox -- api::' "$out/kind-plan"
  # The image the script loads is the one the overlay runs.
  grep -q 'image: idbase:kind' "$out/kind.yaml"
  local bad
  for bad in "--bogus" "--gateway-port 80" "--admin-port x" "--cluster Bad_Name" "--gateway-port 20000 --admin-port 20000"; do
    # shellcheck disable=SC2086 # word splitting wanted
    if "$root/e2e/kind/run.sh" --dry-run $bad >/dev/null 2>&1; then echo "accepted: $bad"; return 1; fi
  done
}
check kind-dry-run-and-args kind_dry_run

check shellcheck shellcheck "$k8s/check.sh" "$k8s/rotate-secrets.sh" "$root/e2e/kind/run.sh"

echo "k8s-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]] || { echo "failed: ${failures[*]}" >&2; exit 1; }
