"""Validate rendered manifests offline, strictly (unknown fields are errors).

Built-in kinds are checked against the Kubernetes OpenAPI schemas shipped in
kubernetes-validate, for every version given; custom resources against the
JSON schemas in k8s/schemas/. A kind with neither is an error, never a skip.

usage: validate.py --kube-version 1.30.0 [--kube-version ...] FILE...
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schemas"
CUSTOM = {
    ("kubernetes-client.io/v1", "ExternalSecret"): "externalsecret-kubernetes-client.io-v1.json",
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager.io-v1.json",
    ("cert-manager.io/v1", "Issuer"): "issuer-cert-manager.io-v1.json",
}


def resources(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check(doc, versions):
    """Returns a list of problems with one resource."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CUSTOM:
        schema = json.loads((SCHEMAS / CUSTOM[key]).read_text(encoding="utf-8"))
        validator = jsonschema.Draft7Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"k8s {version}: {'/'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"k8s {version}: no schema for {key[0]} {key[1]} (ship one in k8s/schemas/)")
    return problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = checked = 0
    for path in args.files:
        for doc in resources(path):
            checked += 1
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            for problem in check(doc, args.kube_version):
                failed += 1
                print(f"INVALID {name}: {problem}")
    print(f"validate: {checked} resources, {failed} problems, Kubernetes {' '.join(args.kube_version)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
