//! The node is locked (issue 11) on a real `xkube cluster up --nodes 2`: every kubelet API
//! (port 10250) is HTTPS only with a serving certificate of the cluster CA, refuses anonymous
//! requests (401), refuses a service account without RBAC rights (403 with Kubernetes'
//! message), while `kubectl exec` and `kubectl logs` through the apiserver (which presents
//! its kubelet-client certificate) still work. All traffic to the nodes comes from the
//! cluster's client namespace (198.18.0.100).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use base64::Engine as _;
use xkube_e2e::{Cluster, https_request_here};

const KUBELET_PORT: u16 = 10250;

#[test]
fn privileged_kubelet_api_needs_credentials_and_rights_kubectl_still_works() {
    let c = Cluster::up(2, &[]);
    c.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: locked}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "echo locked-log-line; exec sleep 3600"]
"#,
    );
    c.wait("pod locked Running", Duration::from_secs(90), || {
        let p = c.get_json(&["pod", "locked"]);
        (p["status"]["phase"] == "Running").then_some(())
    });
    let ca = c.ca_cert();
    let client = c.client_ns();

    // Anonymous HTTPS to every node: 401 for the pod list, exec, run and logs. The
    // handshake itself verifies each kubelet's certificate against the cluster CA for the
    // node's address.
    let paths = [
        ("GET", "/pods"),
        (
            "POST",
            "/exec/default/locked/c?command=cat&command=/etc/shadow",
        ),
        ("POST", "/run/default/locked/c?cmd=id"),
        ("GET", "/containerLogs/default/locked/c"),
    ];
    for i in 0..c.nodes {
        let to = SocketAddrV4::new(c.node_addr(i), KUBELET_PORT);
        for (method, path) in paths {
            let ca = ca.clone();
            let answer = client
                .run(move || {
                    https_request_here(to, method, path, &ca, None, Duration::from_secs(10))
                })
                .unwrap_or_else(|e| panic!("entering the client namespace: {e}"))
                .unwrap_or_else(|e| panic!("HTTPS {method} {to}{path}: {e}"));
            assert_eq!(
                answer,
                (401, "Unauthorized".to_string()),
                "anonymous {method} {to}{path}"
            );
        }
        // Plain HTTP on the kubelet port: no kubelet answers (the TLS layer drops it).
        let raw = client
            .run(move || -> std::io::Result<Vec<u8>> {
                let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /pods HTTP/1.0\r\nHost: kubelet\r\n\r\n")?;
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                Ok(out)
            })
            .unwrap_or_else(|e| panic!("entering the client namespace: {e}"))
            .unwrap_or_else(|e| panic!("plain HTTP to {to}: {e}"));
        assert!(
            !raw.starts_with(b"HTTP/"),
            "plain HTTP to {to} got an HTTP answer: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }

    // A fresh service account without RBAC rights: authenticated by TokenReview, denied by
    // SubjectAccessReview.
    c.kubectl_ok(&["create", "serviceaccount", "nobody"]);
    let token = c.wait("a token for nobody", Duration::from_secs(60), || {
        let secrets = c.get_json(&["secrets"]);
        secrets["items"]
            .as_array()?
            .iter()
            .find(|s| {
                s["type"] == "kubernetes.io/service-account-token"
                    && s["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                        == "nobody"
            })
            .and_then(|s| s["data"]["token"].as_str())
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .and_then(|t| String::from_utf8(t).ok())
    });
    let pod = c.get_json(&["pod", "locked"]);
    let node = pod["spec"]["nodeName"].as_str().expect("pod is scheduled");
    let i = (0..c.nodes)
        .find(|i| c.node_name(*i) == node)
        .unwrap_or_else(|| panic!("unknown node {node}"));
    let to = SocketAddrV4::new(c.node_addr(i), KUBELET_PORT);
    let answer = {
        let ca = ca.clone();
        client
            .run(move || {
                https_request_here(
                    to,
                    "POST",
                    "/exec/default/locked/c?command=id",
                    &ca,
                    Some(&token),
                    Duration::from_secs(10),
                )
            })
            .unwrap_or_else(|e| panic!("entering the client namespace: {e}"))
            .unwrap_or_else(|e| panic!("HTTPS exec with a token: {e}"))
    };
    assert_eq!(
        answer,
        (
            403,
            "Forbidden (user=system:serviceaccount:default:nobody, verb=create, \
             resource=nodes, subresource=proxy)"
                .to_string()
        ),
        "a service account without rights on nodes/proxy"
    );

    // Through the apiserver, with the admin kubeconfig: upstream kubectl exec and logs work.
    let out = c.kubectl_ok(&["exec", "locked", "--", "echo", "through-the-apiserver"]);
    assert_eq!(out, "through-the-apiserver\n");
    let logs = c.kubectl_ok(&["logs", "locked"]);
    assert!(logs.contains("locked-log-line"), "{logs}");
}

/// Every component of `cluster up` talks to the apiserver as itself, not as admin: the
/// kubeconfigs `xkube server` and `cluster up` issue name the identities Kubernetes' bootstrap
/// roles are bound to (checked with upstream `kubectl auth whoami`).
#[test]
fn privileged_components_run_under_their_own_identities() {
    let c = Cluster::up(2, &[]);
    let data = c.data_root.join(&c.name);
    let mut want = vec![
        (
            data.join("control-plane/scheduler.kubeconfig"),
            "system:kube-scheduler".to_string(),
            None,
        ),
        (
            data.join("control-plane/controller-manager.kubeconfig"),
            "system:kube-controller-manager".to_string(),
            None,
        ),
    ];
    for i in 0..c.nodes {
        let node = c.node_name(i);
        want.push((
            data.join(&node).join("kubelet.kubeconfig"),
            format!("system:node:{node}"),
            Some("system:nodes"),
        ));
        want.push((
            data.join(&node).join("proxy.kubeconfig"),
            "system:kube-proxy".to_string(),
            None,
        ));
    }
    for (kubeconfig, user, group) in want {
        let out = std::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["auth", "whoami", "-o", "json"])
            .env("HOME", &c.data_root)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kubectl: {e}"));
        assert!(
            out.status.success(),
            "kubectl auth whoami with {}: {}",
            kubeconfig.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let review: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("whoami json: {e}"));
        let info = &review["status"]["userInfo"];
        assert_eq!(info["username"], user.as_str(), "{}", kubeconfig.display());
        if let Some(g) = group {
            assert!(
                info["groups"]
                    .as_array()
                    .is_some_and(|gs| gs.iter().any(|x| x == g)),
                "{} is in {g}: {info}",
                kubeconfig.display()
            );
        }
    }

    // A kubelet's own credentials (the Node authorizer): the secret its pod mounts, yes;
    // a secret no pod on its node uses, 403; the other node cannot read the first's.
    let node0 = c.node_name(0);
    c.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: mounted}}
stringData: {{k: v}}
---
apiVersion: v1
kind: Secret
metadata: {{name: unused}}
stringData: {{k: v}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  nodeName: {node0}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "cat /s/k; exec sleep 3600"]
    volumeMounts: [{{name: s, mountPath: /s}}]
  volumes:
  - name: s
    secret: {{secretName: mounted}}
"#
    ));
    c.wait("pod reader Running", Duration::from_secs(90), || {
        let p = c.get_json(&["pod", "reader"]);
        (p["status"]["phase"] == "Running").then_some(())
    });
    let as_kubelet = |i: usize, secret: &str| {
        std::process::Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(data.join(c.node_name(i)).join("kubelet.kubeconfig"))
            .args(["get", "secret", secret, "-o", "name"])
            .env("HOME", &c.data_root)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kubectl: {e}"))
    };
    let out = as_kubelet(0, "mounted");
    assert!(
        out.status.success(),
        "the kubelet of {node0} reads its pod's secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, secret) in [(0, "unused"), (1, "mounted")] {
        let out = as_kubelet(i, secret);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("Forbidden")
                && err.contains("no relationship found"),
            "the kubelet of {} must not read secret {secret}: {err}",
            c.node_name(i)
        );
    }
}
