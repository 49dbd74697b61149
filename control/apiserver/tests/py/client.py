"""The official Python kubernetes client against an xkube apiserver (kubeconfig path in argv[1])."""
import sys

from kubernetes import client, config, watch
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
names = [n.metadata.name for n in v1.list_namespace().items]
assert "kube-system" in names, names
svc = client.V1Service(metadata=client.V1ObjectMeta(name="pysvc"), spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)], selector={"app": "x"}))
s = v1.create_namespaced_service("default", svc)
assert s.spec.cluster_ip.startswith("10."), s.spec.cluster_ip
pod = client.V1Pod(metadata=client.V1ObjectMeta(generate_name="py-", labels={"a": "b"}), spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]))
p = v1.create_namespaced_pod("default", pod)
assert p.metadata.name.startswith("py-") and p.status.phase == "Pending"
w = watch.Watch()
n = 0
for ev in w.stream(v1.list_namespaced_pod, "default", timeout_seconds=2):
    assert ev["type"] == "ADDED", ev["type"]
    n += 1
assert n == 1, n
v1.patch_namespaced_pod(p.metadata.name, "default", {"metadata": {"labels": {"c": "d"}}})
assert v1.read_namespaced_pod(p.metadata.name, "default").metadata.labels == {"a": "b", "c": "d"}
v1.delete_namespaced_pod(p.metadata.name, "default")
v1.delete_namespaced_service("pysvc", "default")
try:
    v1.read_namespaced_service("pysvc", "default")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status
    print("ok")
    sys.exit(0)
sys.exit("service still present after delete")
