"""The official Python kubernetes client's streaming calls against an xkube cluster
(KUBECONFIG in the environment; argv[1]: a running pod serving HTTP on port 80): what the
client's own e2e tests test_pod_apis, test_pod_exec_close_channel, test_portforward_raw,
test_portforward_http and test_service_apis do (exec with and without stdin, the v5 stdin
close signal, the return code, raw port-forward to several ports with one refused, HTTP over
a forwarded port, a Service read back with its status). Written for xkube; the upstream e2e
files are not on PyPI and GitHub is not reachable from the CI machines."""
import socket
import sys
import time
import uuid

from kubernetes import client, config
from kubernetes.stream import portforward, stream

config.load_kube_config()
api = client.CoreV1Api()
http_pod = sys.argv[1]


def wait_running(name, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = api.read_namespaced_pod(name, "default")
        if p.status.phase == "Running":
            return p
        time.sleep(0.5)
    raise AssertionError("pod %s not Running: %s" % (name, p.status))


# --- test_pod_apis: a shell pod, exec without and with stdin ---
name = "busybox-test-" + str(uuid.uuid4())[:8]
api.create_namespaced_pod("default", {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
    "spec": {"containers": [{"image": "xkube/agnhost:0.1.0", "name": "sleep",
                             "command": ["/bin/sh", "-c", "while true; do date; sleep 5; done"]}]},
})
wait_running(name)
exec_command = ["/bin/sh", "-c", "for i in $(seq 1 3); do date; done"]
resp = stream(api.connect_get_namespaced_pod_exec, name, "default", command=exec_command,
              stderr=False, stdin=False, stdout=True, tty=False)
assert len(resp.splitlines()) == 3, repr(resp)
exec_command = ["/bin/sh", "-c", "echo -n 'This is a test string'"]
resp = stream(api.connect_get_namespaced_pod_exec, name, "default", command=exec_command,
              stderr=False, stdin=False, stdout=True, tty=False)
assert resp == "This is a test string", repr(resp)

resp = stream(api.connect_post_namespaced_pod_exec, name, "default", command=["/bin/sh"],
              stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
resp.write_stdin("echo test string 1\n")
line = resp.readline_stdout(timeout=5)
assert not resp.peek_stderr()
assert line == "test string 1", repr(line)
resp.write_stdin("echo test string 2 >&2\n")
line = resp.readline_stderr(timeout=5)
assert not resp.peek_stdout()
assert line == "test string 2", repr(line)
resp.write_stdin("exit\n")
resp.update(timeout=5)
while resp.is_open():
    resp.update(timeout=5)
assert resp.returncode == 0, resp.returncode

resp = stream(api.connect_post_namespaced_pod_exec, name, "default",
              command=["/bin/sh", "-c", "exit 42"], stderr=True, stdin=False, stdout=True,
              tty=False, _preload_content=False)
resp.run_forever(timeout=10)
assert resp.returncode == 42, resp.returncode
print("test_pod_apis: ok")

# --- test_pod_exec_close_channel: stdin closed with the v5 close signal ---
resp = stream(api.connect_post_namespaced_pod_exec, name, "default", command=["cat"],
              stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
assert resp.subprotocol == "v5.channel.k8s.io", resp.subprotocol
resp.write_stdin("test string from stdin")
resp.close_channel(0)
resp.run_forever(timeout=10)
out = resp.read_stdout()
assert out == "test string from stdin", repr(out)
assert resp.returncode == 0, resp.returncode
print("test_pod_exec_close_channel: ok")
api.delete_namespaced_pod(name, "default", body=client.V1DeleteOptions(grace_period_seconds=0))

# --- test_portforward_raw: socat echo servers on 1234 and 1235, nothing on 1236 ---
pf_name = "portforward-raw-" + str(uuid.uuid4())[:8]
api.create_namespaced_pod("default", {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pf_name},
    "spec": {"containers": [{"image": "xkube/agnhost:0.1.0", "name": "port-server",
                             "command": ["/bin/sh", "-c",
                                         "socat TCP4-LISTEN:1234,fork EXEC:cat & "
                                         "socat TCP4-LISTEN:1235,fork EXEC:cat & wait"],
                             "ports": [{"containerPort": 1234}, {"containerPort": 1235}]}]},
})
wait_running(pf_name)
time.sleep(1)  # socat listening
pf1 = portforward(api.connect_get_namespaced_pod_portforward, pf_name, "default",
                  ports="1234,1235,1236")
assert pf1.connected
sock1234 = pf1.socket(1234)
sock1235 = pf1.socket(1235)
sock1234.setblocking(True)
sock1235.setblocking(True)
sent1234 = b"Test port 1234 forwarding..."
sent1235 = b"Test port 1235 forwarding..."
sock1234.sendall(sent1234)
sock1235.sendall(sent1235)
reply1234 = b""
reply1235 = b""
while len(reply1234) < len(sent1234) or len(reply1235) < len(sent1235):
    if len(reply1234) < len(sent1234):
        data = sock1234.recv(1024)
        assert data, "port 1234 closed early"
        reply1234 += data
    if len(reply1235) < len(sent1235):
        data = sock1235.recv(1024)
        assert data, "port 1235 closed early"
        reply1235 += data
assert reply1234 == sent1234 and reply1235 == sent1235
sock1236 = pf1.socket(1236)
deadline = time.time() + 10
while pf1.error(1236) is None and time.time() < deadline:
    time.sleep(0.1)
assert pf1.error(1236) is not None, "no error for port 1236"
sock1234.close()
sock1235.close()
deadline = time.time() + 10
while pf1.connected and time.time() < deadline:
    time.sleep(0.1)
assert not pf1.connected, "port-forward still connected after its sockets closed"
assert pf1.error(1234) is None and pf1.error(1235) is None
print("test_portforward_raw: ok (1236: %s)" % pf1.error(1236))
api.delete_namespaced_pod(pf_name, "default", body=client.V1DeleteOptions(grace_period_seconds=0))

# --- test_portforward_http: HTTP over a forwarded port ---
pf = portforward(api.connect_get_namespaced_pod_portforward, http_pod, "default", ports="80")
s = pf.socket(80)
s.setblocking(True)
s.sendall(b"GET /hostname HTTP/1.0\r\nHost: localhost\r\n\r\n")
answer = b""
while True:
    data = s.recv(4096)
    if not data:
        break
    answer += data
s.close()
assert answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0], answer
assert answer.split(b"\r\n\r\n", 1)[1].strip() == http_pod.encode(), answer
print("test_portforward_http: ok")

# --- test_service_apis ---
svc_name = "frontend-" + str(uuid.uuid4())[:8]
service = {
    "kind": "Service", "apiVersion": "v1", "metadata": {"name": svc_name},
    "spec": {"ports": [{"name": "port", "protocol": "TCP", "port": 80, "targetPort": 80}],
             "selector": {"name": svc_name}},
}
resp = api.create_namespaced_service(body=service, namespace="default")
assert resp.metadata.name == svc_name
assert resp.status is not None, "no status on the created Service"
resp = api.read_namespaced_service(name=svc_name, namespace="default")
assert resp.metadata.name == svc_name
assert resp.status is not None and resp.status.load_balancer is not None, resp.status
service["spec"]["ports"] = [{"name": "new", "protocol": "TCP", "port": 8080, "targetPort": 8080}]
resp = api.patch_namespaced_service(body=service, name=svc_name, namespace="default")
# A strategic merge keyed by port: both ports now.
assert sorted(p.port for p in resp.spec.ports) == [80, 8080], resp.spec.ports
assert resp.status is not None, "no status on the patched Service"
resp = api.delete_namespaced_service(name=svc_name, body={}, namespace="default")
print("test_service_apis: ok")
