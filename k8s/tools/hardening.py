"""Security properties of the rendered overlays that schemas and checkov do not know.

usage: hardening.py EKS_RENDER KIND_RENDER README

- trusted proxies: on EKS the gateway trusts exactly the ALB subnets that the
  gateway-ingress NetworkPolicy admits, and nothing covering the internet; on
  kind it trusts nothing (X-Forwarded-For is ignored).
- database TLS: on EKS the URL asks for `ssl-mode=VERIFY_IDENTITY` with an
  `ssl-ca` file, and every workload with a database URL mounts that file.
- ingress: an internet-facing Ingress answers /internal and /metrics itself
  (an action, listed before any path that covers them); only the gateway's
  `http` port is routed; no Service exposes a metrics port.
- keys: no migrate Job mounts the signing keys; idsvc does.
- sizing: the requests/limits in README's "What runs" table match the manifests.

Prints one line per property and exits 1 if any fails.
"""

import ipaddress
import re
import sys


from secret_refs import docs, pod_spec  # one reading of manifests and pod templates

SIGNING_SECRET = "idsvc-signing-keys"


def named(manifests, kind, name):
    """The object of KIND whose name is NAME or NAME plus a kustomize suffix."""
    found = [
        d
        for d in manifests
        if d["kind"] == kind
        and (d["metadata"]["name"] == name or d["metadata"]["name"].startswith(name + "-"))
    ]
    if len(found) != 1:
        raise AssertionError(f"want one {kind} {name}, found {len(found)}")
    return found[0]


def workloads(manifests):
    for doc in manifests:
        pod = pod_spec(doc)
        if pod is not None:
            yield doc, pod


def env_value(manifests, env):
    """An env entry's value, following configMapKeyRef into the render."""
    if "value" in env:
        return env["value"]
    ref = env.get("valueFrom", {}).get("configMapKeyRef")
    if ref:
        return named(manifests, "ConfigMap", ref["name"])["data"][ref["key"]]
    raise AssertionError(f"{env['name']}: neither a value nor a ConfigMap key")


def container_env(pod, name):
    return [e for c in pod["containers"] for e in c.get("env", []) if e["name"] == name]


def cidrs(text):
    return {ipaddress.ip_network(c.strip()) for c in text.split(",") if c.strip()}


def check_trusted_proxies(eks, kind):
    gateway = pod_spec(named(eks, "Deployment", "gateway"))
    envs = container_env(gateway, "IDBASE_TRUSTED_PROXIES")
    assert len(envs) == 1, "the EKS gateway does not set IDBASE_TRUSTED_PROXIES"
    trusted = cidrs(env_value(eks, envs[0]))
    assert trusted, "IDBASE_TRUSTED_PROXIES is empty on EKS"
    for net in trusted:
        assert net.is_private, f"trusted proxy {net} is not a private (VPC) range"
    policy = named(eks, "NetworkPolicy", "gateway-ingress")
    admitted = {
        ipaddress.ip_network(peer["ipBlock"]["cidr"])
        for rule in policy["spec"]["ingress"]
        for peer in rule.get("from", [])
        if "ipBlock" in peer
    }
    assert trusted == admitted, (
        f"trusted proxies {sorted(map(str, trusted))} differ from the ALB subnets the "
        f"gateway-ingress policy admits {sorted(map(str, admitted))}"
    )
    for doc, pod in workloads(kind):
        assert not container_env(pod, "IDBASE_TRUSTED_PROXIES"), (
            f"kind: {doc['kind']}/{doc['metadata']['name']} trusts proxies"
        )
        for c in pod["containers"]:
            assert not c.get("envFrom"), f"kind: {doc['metadata']['name']} takes envFrom"
    return f"EKS trusts {len(trusted)} ALB subnets (= gateway-ingress ipBlocks); kind trusts none"


def check_database_tls(eks):
    params = named(eks, "ConfigMap", "idsvc-database")["data"]["params"]
    query = dict(p.split("=", 1) for p in params.lstrip("?").split("&") if p)
    mode = query.get("ssl-mode", "").upper()
    assert mode == "VERIFY_IDENTITY", f"ssl-mode is {mode or 'unset'}, want VERIFY_IDENTITY"
    ca = query.get("ssl-ca")
    assert ca and ca.startswith("/"), "no absolute ssl-ca path"
    directory, file = ca.rsplit("/", 1)
    users = 0
    for doc, pod in workloads(eks):
        if not container_env(pod, "IDBASE_DATABASE_URL"):
            continue
        users += 1
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", [])]
        mount = next((m for m in mounts if m["mountPath"] == directory), None)
        assert mount, f"{where} does not mount {directory}"
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "configMap" in volume, f"{where}: {directory} is not the CA ConfigMap"
        bundle = named(eks, "ConfigMap", volume["configMap"]["name"])["data"].get(file)
        assert bundle, f"{where}: the mounted ConfigMap has no {file}"
        count = bundle.count("-----BEGIN CERTIFICATE-----")
        assert count and count == bundle.count("-----END CERTIFICATE-----"), f"{file} is no PEM bundle"
    assert users >= 4, f"only {users} workloads connect to the database"
    return f"VERIFY_IDENTITY with {ca} ({count} CAs) mounted in all {users} database clients"


def covers(prefix, path):
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def check_ingress(eks, kind):
    public = 0
    for ing in (d for d in eks if d["kind"] == "Ingress"):
        name = ing["metadata"]["name"]
        notes = ing["metadata"].get("annotations", {})
        paths = [p for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]
        for p in paths:
            service = p["backend"]["service"]
            action = service["port"].get("name") == "use-annotation"
            assert action or (service["name"] == "gateway" and service["port"].get("name") == "http"), (
                f"{name}: {p['path']} routes to {service}"
            )
        if notes.get("alb.ingress.kubernetes.io/scheme") == "internet-facing":
            public += 1
            assert notes.get("alb.ingress.kubernetes.io/wafv2-acl-arn"), f"{name}: no WAF web ACL"
            for private in ("/internal", "/metrics"):
                first = next((p for p in paths if covers(p["path"], private)), None)
                assert first, f"{name}: nothing answers {private}"
                port = first["backend"]["service"]["port"].get("name")
                assert port == "use-annotation", f"{name}: {private} is routed to the gateway ({first['path']})"
                action = first["backend"]["service"]["name"]
                answer = notes.get(f"alb.ingress.kubernetes.io/actions.{action}", "")
                assert '"fixed-response"' in answer, f"{name}: action {action} is not a fixed response"
        else:
            assert all(covers("/internal", p["path"]) for p in paths), f"{name}: internal ALB serves more than /internal"
            assert notes.get("alb.ingress.kubernetes.io/inbound-cidrs"), f"{name}: internal ALB open to the whole VPC"
    assert public == 1, f"{public} internet-facing Ingresses"
    for render in (eks, kind):
        for svc in (d for d in render if d["kind"] == "Service"):
            for port in svc["spec"]["ports"]:
                target = str(port.get("targetPort", port["port"]))
                assert target not in ("metrics", "9090"), f"Service {svc['metadata']['name']} exposes metrics"
    return "the public ALB answers /internal and /metrics itself; only gateway:http is routed; no Service exposes metrics"


def check_job_keys(eks, kind):
    for label, render in (("eks", eks), ("kind", kind)):
        for doc, pod in workloads(render):
            secrets = [v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v] + [
                s["secret"]["name"]
                for v in pod.get("volumes", [])
                for s in v.get("projected", {}).get("sources", [])
                if "secret" in s
            ]
            signing = any(s.startswith(SIGNING_SECRET) for s in secrets)
            if doc["kind"] in ("CronJob", "Job"):
                assert not signing, f"{label}: {doc['metadata']['name']} mounts the signing keys"
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "idsvc":
                assert signing, f"{label}: idsvc does not mount the signing keys"
    return "migrate jobs mount no signing keys; idsvc does"


def quantity(text):
    """'1 CPU' -> '1'; '256Mi' -> '256Mi'."""
    return re.sub(r"\s*CPU$", "", text.strip())


def check_sizing(eks, readme):
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    header = re.search(r"^\|\s*\|\s*gateway\s*\|\s*idsvc\s*\|$", text, re.M)
    row = re.search(r"^\| requests / limits \| (.+?) \| (.+?) \|$", text, re.M)
    assert header and row, "README has no `requests / limits` row under `| | gateway | idsvc |`"
    for name, cell in (("gateway", row.group(1)), ("idsvc", row.group(2))):
        m = re.fullmatch(r"(.+), (.+) / (.+), (.+)", cell)
        assert m, f"README cell {cell!r} is not `cpu, mem / cpu, mem`"
        documented = [quantity(x) for x in m.groups()]
        pod = pod_spec(named(eks, "Deployment", name))
        res = pod["containers"][0]["resources"]
        actual = [
            str(res["requests"]["cpu"]),
            str(res["requests"]["memory"]),
            str(res["limits"]["cpu"]),
            str(res["limits"]["memory"]),
        ]
        assert documented == actual, f"{name}: README says {documented}, the manifest {actual}"
    return "README's requests/limits match the manifests"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    eks, kind, readme = docs(sys.argv[1]), docs(sys.argv[2]), sys.argv[3]
    checks = [
        ("trusted-proxies", lambda: check_trusted_proxies(eks, kind)),
        ("database-tls", lambda: check_database_tls(eks)),
        ("ingress", lambda: check_ingress(eks, kind)),
        ("job-keys", lambda: check_job_keys(eks, kind)),
        ("sizing", lambda: check_sizing(eks, readme)),
    ]
    failed = 0
    for name, check in checks:
        try:
            print(f"ok    {name}: {check()}")
        except (AssertionError, KeyError, StopIteration, ValueError) as err:
            failed += 1
            print(f"FAIL  {name}: {err!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
