#!/usr/bin/env bash
# Checks every deployment artifact offline, with the tools named in
# docs/DEPLOY.md (installed here if missing): the Dockerfile, the compose
# stack, the Kubernetes manifests (both overlays, against the Kubernetes
# schemas, plus svc's own cross-checks and the custom resources), the alert
# rules (syntax and unit tests), the Grafana dashboard and the GitHub workflows.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${SVC_K8S_VERSION:-1.31.0}
# check-jsonschema 0.33 is the first with the compose-spec schema built in.
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
PIP_TOOLS=(kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION PyYAML jsonschema)

SCRIPT=check-deploy
source scripts/lib.sh

ensure_tools() {
    local packages=()
    command -v promtool >/dev/null || packages+=(prometheus)
    command -v yamllint >/dev/null || packages+=(yamllint)
    command -v docker-compose >/dev/null || packages+=(docker-compose)
    command -v kubectl >/dev/null || packages+=(kubectl)
    if ((${#packages[@]})); then
        log "installing ${packages[*]}"
        # The prometheus package would start a server: keep services down.
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null ||
            { as_root rm -f /usr/sbin/policy-rc.d; die "cannot install ${packages[*]}"; }
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    # The pinned versions, not just any: an older check-jsonschema lacks schemas used below.
    if ! python3 -m pip show kubernetes-validate 2>/dev/null | grep -qx "Version: $KUBERNETES_VALIDATE_VERSION" ||
        ! python3 -m pip show check-jsonschema 2>/dev/null | grep -qx "Version: $CHECK_JSONSCHEMA_VERSION"; then
        log "installing ${PIP_TOOLS[*]}"
        python3 -m pip install -q --disable-pip-version-check "${PIP_TOOLS[@]}"
    fi
}

ensure_tools
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT

log "yamllint"
yamllint --strict .

log "Dockerfile"
python3 scripts/check_artifacts.py dockerfile Dockerfile

log "compose"
docker-compose -f compose/compose.yaml --env-file compose/.env.example config -q
check-jsonschema --builtin-schema vendor.compose-spec compose/compose.yaml
python3 scripts/check_artifacts.py compose compose/compose.yaml compose/.env.example
bash -n compose/postgres/*.sh

log "Kubernetes manifests (schemas of Kubernetes $K8S_VERSION)"
for overlay in deploy/overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" >"$rendered/$name.yaml"
    kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$rendered/$name.yaml" 2>&1 |
        grep -v "Couldn't find schema for kind \(ScaledObject\|TriggerAuthentication\|ServiceMonitor\)" || true
    kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "$rendered/$name.yaml" >/dev/null ||
        die "$overlay does not validate"
done
kubernetes-validate --strict --quiet -k "$K8S_VERSION" deploy/secret.example.yaml
python3 scripts/check_artifacts.py manifests "$rendered"/*.yaml

log "alert rules"
promtool check rules deploy/base/alerts.yml
(cd deploy/base && promtool test rules alerts.test.yml)

log "Grafana"
python3 -m json.tool compose/grafana/dashboards/svc.json >/dev/null
python3 scripts/check_artifacts.py dashboard compose/grafana/dashboards/svc.json

log "GitHub workflows"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

log "every artifact checks out"
