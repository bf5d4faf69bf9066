#!/usr/bin/env bash
# Validates deploy/k8s against the Kubernetes API schemas (PyPI `kubernetes-validate`, which
# bundles the OpenAPI schemas of each Kubernetes release; strict: unknown fields are errors).
# The custom resources (InferencePool, ServiceMonitor) have no schema there (reported as
# skipped); validate_crs.py checks them as strictly against their CRDs' schemas, vendored in
# crd-schemas/. The Kustomization is a kustomize file, not an API object.
#   deploy/k8s/validate.sh [KUBERNETES_VERSION]   (default 1.33.0)
set -euo pipefail
cd "$(dirname "$0")"
venv=${VALIDATE_VENV:-../../target/k8s-validate-venv}
[ -x "$venv/bin/kubernetes-validate" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate>=1.33"
}
"$venv/bin/kubernetes-validate" --strict -k "${1:-1.33.0}" ./*.yaml 2>&1 | tee /tmp/rill-k8s-validate.log
! grep -q "^ERROR" /tmp/rill-k8s-validate.log
"$venv/bin/python" validate_crs.py ./*.yaml
