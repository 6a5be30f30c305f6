"""Check that every Secret a workload uses is provided, and print the pairs.

usage: secret_refs.py MANIFESTS [PROVIDERS...]

A Secret is provided by a Secret or an ExternalSecret (kubernetes-client.io)
of that name, or by a cert-manager Certificate whose `secretName` it is, in
MANIFESTS or in one of the PROVIDERS files. Optional
references (`optional: true`) must be provided too: a missing optional key is
fine, a misspelt Secret name is not. Exits 1 on any reference left dangling.
"""

import sys

import yaml


def docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    return None


def references(pod):
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            yield volume["secret"]["secretName"]
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                yield source["secret"]["name"]
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    manifests = docs(sys.argv[1])
    provided = {
        d["metadata"]["name"]
        for path in sys.argv[1:]
        for d in docs(path)
        if d["kind"] in ("Secret", "ExternalSecret")
    } | {
        d["spec"]["secretName"]
        for path in sys.argv[1:]
        for d in docs(path)
        if d["kind"] == "Certificate" and d["apiVersion"].startswith("cert-manager.io/")
    }
    dangling = 0
    for doc in manifests:
        pod = pod_spec(doc)
        if pod is None:
            continue
        for name in sorted(set(references(pod))):
            status = "ok" if name in provided else "MISSING"
            dangling += name not in provided
            print(f"{status:8} {doc['kind']}/{doc['metadata']['name']} -> {name}")
    return 1 if dangling else 0


if __name__ == "__main__":
    sys.exit(main())
