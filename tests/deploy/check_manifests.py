#!/usr/bin/python3
"""The Kubernetes manifests and the Compose file parse and hang together.

YAML is parsed with PyYAML; then the structure Kubernetes would check first: kinds and API
versions, selectors that match the pod labels, named ports that exist, the ConfigMap the
pods mount, and a vbd.toml in it that vbd itself accepts.
"""
import subprocess
import sys
import tempfile

import yaml


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def main(repo, vbd):
    with open(f"{repo}/deploy/kubernetes/vbd.yaml") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in documents}
    check(set(by_kind) == {"Namespace", "ConfigMap", "DaemonSet", "Service"},
          f"manifests hold {sorted(by_kind)}")
    for d in documents:
        check("apiVersion" in d and "name" in d["metadata"], f"{d['kind']} has apiVersion and name")
    daemonset = by_kind["DaemonSet"]
    check(daemonset["apiVersion"] == "apps/v1", "DaemonSet is apps/v1")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    check(daemonset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
          "DaemonSet selector matches its pod labels")
    service = by_kind["Service"]
    check(service["spec"]["clusterIP"] == "None", "Service is headless")
    check(service["spec"]["selector"].items() <= pod_labels.items(),
          "Service selects the daemon pods")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        check(port["targetPort"] in port_names, f"Service port {port['name']} targets a container port")
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        check(mount["name"] in volumes, f"volume {mount['name']} exists")
    config_map = by_kind["ConfigMap"]
    check(volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"],
          "pods mount the ConfigMap")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as toml:
        toml.write(config_map["data"]["vbd.toml"])
        toml.flush()
        # vbd reads the file before the flags: a file it accepts shows as the complaint about
        # the deliberately bad --port that follows, and nothing starts serving.
        result = subprocess.run([vbd, "--config", toml.name, "--port", "-5"],
                                capture_output=True, text=True, timeout=30)
        check("server.port" in result.stderr and "unknown key" not in result.stderr,
              "vbd accepts every key of the ConfigMap's vbd.toml (then refuses the bad --port)")
    compose = subprocess.run(["docker-compose", "-f", f"{repo}/deploy/docker-compose.yml",
                              "config", "--quiet"], capture_output=True, text=True, timeout=60)
    check(compose.returncode == 0, f"docker-compose config accepts deploy/docker-compose.yml "
                                   f"{compose.stderr}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
