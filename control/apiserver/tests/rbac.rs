//! RBAC and the Node authorizer (the default `--authorization-mode Node,RBAC`) on the secure
//! port: bootstrap policy, bindings taking effect, escalation checks, the review APIs, a
//! kubelet's view of secrets, policy validation, and upstream `kubectl auth can-i/whoami`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use xkube_apiserver::testing::TestServer;

const KUBECTL: &str = "/usr/bin/kubectl";

/// Users of the token file: an admin, two plain users and a kubelet of node n1.
const TOKENS: &str = "admintok,root,0,\"system:masters\"\n\
alicetok,alice,1\n\
bobtok,bob,2\n\
n1tok,system:node:n1,3,\"system:nodes\"\n";

struct Secure {
    server: xkube_apiserver::RunningServer,
    client: reqwest::Client,
    base: String,
    ca: std::path::PathBuf,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, TOKENS).expect("write tokens");
        let data = dir.path().join("data");
        let server = TestServer::builder(&data)
            .secure()
            .options(move |o| o.token_auth_file = Some(tokens))
            .start()
            .await
            .expect("starts");
        let ca = server.ca_cert.clone().expect("ca");
        let pem = std::fs::read(&ca).expect("ca pem");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let base = format!(
            "https://127.0.0.1:{}",
            server.secure_addr.expect("secure").port()
        );
        Secure {
            server,
            client,
            base,
            ca,
            data,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_typed(token, method, path, "application/json", body)
            .await
    }

    async fn call_typed(
        &self,
        token: &str,
        method: &str,
        path: &str,
        ctype: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .client
            .request(m, format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        if let Some(b) = body {
            req = req.header("content-type", ctype).body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    /// Polls until `f` holds (RBAC reads the watch caches, which follow writes shortly).
    async fn eventually(&self, what: &str, mut f: impl AsyncFnMut() -> bool) {
        for _ in 0..200 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn kubeconfig(&self, dir: &Path, user: &str, token: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{user}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\n",
                self.base,
                self.ca.display()
            ),
        )
        .expect("write kubeconfig");
        path
    }
}

/// A fresh service account `ns/name` with a token secret signed by the server's key (what
/// the token controller would make); returns the token.
async fn service_account_token(s: &Secure, ns: &str, name: &str) -> String {
    use base64::Engine;
    use xkube_apiserver::satoken::{Claims, KEY_FILE, Signer};
    let (code, sa) = s
        .call(
            "admintok",
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            Some(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})),
        )
        .await;
    assert_eq!(code, 201, "{sa}");
    let uid = sa["metadata"]["uid"].as_str().expect("uid");
    let secret = format!("{name}-token-x1y2z");
    let token = Signer::from_file(&s.data.join(KEY_FILE))
        .expect("server's key")
        .sign(&Claims::new(ns, name, uid, &secret))
        .expect("signed");
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let body = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": secret, "annotations": {"kubernetes.io/service-account.name": name,
                                                     "kubernetes.io/service-account.uid": uid}},
        "data": {"token": b64(&token), "namespace": b64(ns)}});
    let (code, out) = s
        .call(
            "admintok",
            "POST",
            &format!("/api/v1/namespaces/{ns}/secrets"),
            Some(body),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    token
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn ssar(verb: &str, resource: &str, ns: &str) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
           "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_policy_bindings_and_reviews() {
    let s = Secure::start().await;
    let (code, list) = s
        .call(
            "admintok",
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str())
        .collect();
    for want in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:node",
        "system:node-proxier",
        "system:kube-scheduler",
        "system:kube-controller-manager",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    // alice has no rights beyond the basic ones.
    let (code, body) = s
        .call("alicetok", "GET", "/api/v1/namespaces/team/pods", None)
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""
    );
    let (code, body) = s
        .call(
            "alicetok",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(ssar("create", "pods", "team")),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["allowed"], false);
    // Discovery and whoami work for any authenticated user.
    assert_eq!(s.call("alicetok", "GET", "/api/v1", None).await.0, 200);
    let (code, who) = s
        .call(
            "alicetok",
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        )
        .await;
    assert_eq!(code, 201, "{who}");
    assert_eq!(who["status"]["userInfo"]["username"], "alice");

    // A RoleBinding to `edit` in team: allowed there, not elsewhere.
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "team"}}))
        )
        .await
        .0,
        201
    );
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "alice-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
            Some(rb),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    s.eventually("alice may create pods in team", async || {
        s.call(
            "alicetok",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(ssar("create", "pods", "team")),
        )
        .await
        .1["status"]["allowed"]
            == true
    })
    .await;
    let (_, other) = s
        .call(
            "alicetok",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(ssar("create", "pods", "default")),
        )
        .await;
    assert_eq!(other["status"]["allowed"], false);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert_eq!(
        s.call(
            "alicetok",
            "POST",
            "/api/v1/namespaces/team/pods",
            Some(pod.clone())
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "alicetok",
            "POST",
            "/api/v1/namespaces/default/pods",
            Some(pod)
        )
        .await
        .0,
        403
    );
    // edit grants no RBAC writes.
    let (code, _) = s
        .call(
            "alicetok",
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles",
            None,
        )
        .await;
    assert_eq!(code, 403);

    // SubjectAccessReview (admin asks about alice) and its allow reason.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["system:authenticated"],
                 "resourceAttributes": {"verb": "delete", "resource": "pods", "namespace": "team"}}});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(sar.clone()),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["allowed"], true);
    assert_eq!(
        body["status"]["reason"],
        "RBAC: allowed by RoleBinding \"alice-edit\" of ClusterRole \"edit\" to User \"alice\""
    );
    // alice may not ask about others.
    assert_eq!(
        s.call(
            "alicetok",
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(sar)
        )
        .await
        .0,
        403
    );
    let bad = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "x"}});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(bad),
        )
        .await;
    assert_eq!(code, 422, "{body}");

    // TokenReview: a valid token and a wrong one.
    let tr = |t: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(tr("bobtok")),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"]["authenticated"], true);
    assert_eq!(body["status"]["user"]["username"], "bob");
    let (_, body) = s
        .call(
            "admintok",
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(tr("nope")),
        )
        .await;
    assert_eq!(body["status"]["authenticated"], false);

    // SelfSubjectRulesReview lists the bound rules.
    let (code, body) = s
        .call(
            "alicetok",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": "team"}})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let rules = body["status"]["resourceRules"].as_array().expect("rules");
    assert!(
        rules.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|x| x.contains(&json!("secrets")))
            && r["verbs"]
                .as_array()
                .is_some_and(|v| v.contains(&json!("create")))),
        "{body}"
    );
    // Review kinds are never stored and have no list.
    assert_eq!(
        s.call(
            "admintok",
            "GET",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            None
        )
        .await
        .0,
        405
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_refused_and_policy_objects_are_validated() {
    let s = Secure::start().await;
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    // bob may manage roles and bindings in default and read pods there, nothing more.
    let writer = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "rbac-writer"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                  {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/roles"),
            Some(writer)
        )
        .await
        .0,
        201
    );
    let bind = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bob-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rbac-writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]});
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            Some(bind)
        )
        .await
        .0,
        201
    );
    s.eventually("bob may list roles", async || {
        s.call(
            "bobtok",
            "GET",
            &format!("{rbac}/namespaces/default/roles"),
            None,
        )
        .await
        .0 == 200
    })
    .await;

    // `get` on pods/exec does not run commands: the WebSocket upgrade (a GET) is `create`.
    let peek = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "peek"},
        "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]}]});
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/roles"),
            Some(peek)
        )
        .await
        .0,
        201
    );
    let peek_binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "bob-peek"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "peek"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]});
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            Some(peek_binding)
        )
        .await
        .0,
        201
    );
    s.eventually("bob's peek role is in effect", async || {
        let (_, r) = s
            .call("bobtok", "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": {"verb": "get", "resource": "pods", "subresource": "exec", "namespace": "default"}}})))
            .await;
        r["status"]["allowed"] == true
    })
    .await;
    let (code, body) = s
        .call(
            "bobtok",
            "GET",
            "/api/v1/namespaces/default/pods/p/exec?command=id",
            None,
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot create resource \"pods/exec\"")),
        "{body}"
    );

    // A role with what bob holds: fine. With secrets: refused, and nothing stored.
    let role = |name: &str, resources: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
               "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["get"]}]})
    };
    let (code, body) = s
        .call(
            "bobtok",
            "POST",
            &format!("{rbac}/namespaces/default/roles"),
            Some(role("pod-reader", json!(["pods"]))),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = s
        .call(
            "bobtok",
            "POST",
            &format!("{rbac}/namespaces/default/roles"),
            Some(role("secret-reader", json!(["pods", "secrets"]))),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "roles.rbac.authorization.k8s.io \"secret-reader\" is forbidden: user \"bob\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"
    );
    assert_eq!(
        s.call(
            "admintok",
            "GET",
            &format!("{rbac}/namespaces/default/roles/secret-reader"),
            None
        )
        .await
        .0,
        404
    );
    // Escalating an existing role by update or patch is refused too.
    let (code, body) = s
        .call(
            "bobtok",
            "PUT",
            &format!("{rbac}/namespaces/default/roles/pod-reader"),
            Some(role("pod-reader", json!(["secrets"]))),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = s
        .call_typed(
            "bobtok",
            "PATCH",
            &format!("{rbac}/namespaces/default/roles/pod-reader"),
            "application/merge-patch+json",
            Some(json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (_, kept) = s
        .call(
            "admintok",
            "GET",
            &format!("{rbac}/namespaces/default/roles/pod-reader"),
            None,
        )
        .await;
    assert_eq!(kept["rules"][0]["resources"], json!(["pods"]));

    // Binding: a role bob covers is fine; `admin` is not.
    let binding = |name: &str, kind: &str, role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]})
    };
    let (code, body) = s
        .call(
            "bobtok",
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            Some(binding("ok", "Role", "pod-reader")),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = s
        .call(
            "bobtok",
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            Some(binding("grab", "ClusterRole", "admin")),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"].as_str().is_some_and(
            |m| m.contains("is attempting to grant RBAC permissions not currently held")
        ),
        "{body}"
    );
    // bob cannot touch cluster-scoped policy at all.
    let cr = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []});
    assert_eq!(
        s.call("bobtok", "POST", &format!("{rbac}/clusterroles"), Some(cr))
            .await
            .0,
        403
    );

    // Validation: field paths in a 422; odd verbs and resources are stored as written.
    let bad = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "bad"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Secret", "name": "x"},
        "subjects": [{"kind": "Robot", "name": "r"}]});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/rolebindings"),
            Some(bad),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    let causes: Vec<&str> = body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        causes.contains(&"roleRef.kind") && causes.contains(&"subjects[0].kind"),
        "{body}"
    );
    let bad_rule = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods"]}]});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            &format!("{rbac}/namespaces/default/roles"),
            Some(bad_rule),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("rules[0].verbs")),
        "{body}"
    );
    let odd = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "odd"},
        "rules": [{"apiGroups": ["widgets.example"], "resources": ["gizmos"], "verbs": ["frobnicate"]}]});
    let (code, body) = s
        .call(
            "admintok",
            "POST",
            &format!("{rbac}/clusterroles"),
            Some(odd),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["rules"][0]["verbs"], json!(["frobnicate"]));
    // roleRef is immutable.
    let (code, body) = s
        .call_typed(
            "admintok",
            "PATCH",
            &format!("{rbac}/namespaces/default/rolebindings/ok"),
            "application/merge-patch+json",
            Some(json!({"roleRef": {"name": "rbac-writer"}})),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_authorizer_limits_a_kubelet_to_its_pods() {
    let s = Secure::start().await;
    let secret = |name: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": "v"}});
    for name in ["mounted", "unused", "elsewhere"] {
        assert_eq!(
            s.call(
                "admintok",
                "POST",
                "/api/v1/namespaces/default/secrets",
                Some(secret(name))
            )
            .await
            .0,
            201
        );
    }
    let pod = |name: &str, node: &str, secret: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}],
                        "volumes": [{"name": "s", "secret": {"secretName": secret}}]}})
    };
    for (p, node, sec) in [("mine", "n1", "mounted"), ("theirs", "n2", "elsewhere")] {
        assert_eq!(
            s.call(
                "admintok",
                "POST",
                "/api/v1/namespaces/default/pods",
                Some(pod(p, node, sec))
            )
            .await
            .0,
            201
        );
    }
    s.eventually("n1 may read the secret of its pod", async || {
        s.call(
            "n1tok",
            "GET",
            "/api/v1/namespaces/default/secrets/mounted",
            None,
        )
        .await
        .0 == 200
    })
    .await;
    let (code, body) = s
        .call(
            "n1tok",
            "GET",
            "/api/v1/namespaces/default/secrets/unused",
            None,
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "secrets \"unused\" is forbidden: User \"system:node:n1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\": no relationship found between node 'n1' and this object"
    );
    assert_eq!(
        s.call(
            "n1tok",
            "GET",
            "/api/v1/namespaces/default/secrets/elsewhere",
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        s.call("n1tok", "GET", "/api/v1/namespaces/default/secrets", None)
            .await
            .0,
        403
    );
    // Pods: read all, write the status of its own only.
    assert_eq!(
        s.call(
            "n1tok",
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1",
            None
        )
        .await
        .0,
        200
    );
    let status = json!({"status": {"phase": "Running"}});
    let patch = |p: &str| format!("/api/v1/namespaces/default/pods/{p}/status");
    assert_eq!(
        s.call_typed(
            "n1tok",
            "PATCH",
            &patch("mine"),
            "application/merge-patch+json",
            Some(status.clone())
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call_typed(
            "n1tok",
            "PATCH",
            &patch("theirs"),
            "application/merge-patch+json",
            Some(status)
        )
        .await
        .0,
        403
    );
    // Nodes: register and update itself only.
    let node = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
    assert_eq!(
        s.call("n1tok", "POST", "/api/v1/nodes", Some(node("n1")))
            .await
            .0,
        201
    );
    let (code, body) = s
        .call("n1tok", "POST", "/api/v1/nodes", Some(node("n2")))
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        s.call("admintok", "POST", "/api/v1/nodes", Some(node("n2")))
            .await
            .0,
        201
    );
    let labels = json!({"metadata": {"labels": {"x": "y"}}});
    assert_eq!(
        s.call_typed(
            "n1tok",
            "PATCH",
            "/api/v1/nodes/n1",
            "application/merge-patch+json",
            Some(labels.clone())
        )
        .await
        .0,
        200
    );
    assert_eq!(
        s.call_typed(
            "n1tok",
            "PATCH",
            "/api/v1/nodes/n2",
            "application/merge-patch+json",
            Some(labels)
        )
        .await
        .0,
        403
    );
    // No RBAC writes, no exec.
    assert_eq!(
        s.call(
            "n1tok",
            "POST",
            "/api/v1/namespaces/default/pods/mine/exec?command=id",
            None
        )
        .await
        .0,
        403
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_and_whoami() {
    let s = Secure::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = s.kubeconfig(dir.path(), "root", "admintok");
    let alice = s.kubeconfig(dir.path(), "alice", "alicetok");
    let (code, out, err) = kubectl(&admin, &["auth", "can-i", "create", "pods"]);
    assert_eq!((code, out.as_str()), (0, "yes"), "{err}");
    let (code, out, _) = kubectl(&alice, &["auth", "can-i", "create", "pods"]);
    assert_eq!((code, out.as_str()), (1, "no"));
    // A fresh service account: no; bound to edit in team: yes there only.
    assert_eq!(
        s.call(
            "admintok",
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "apps"}}))
        )
        .await
        .0,
        201
    );
    let bot_token = service_account_token(&s, "apps", "bot").await;
    let bot = s.kubeconfig(dir.path(), "bot", &bot_token);
    let (code, out, err) = kubectl(&bot, &["auth", "can-i", "create", "pods", "-n", "apps"]);
    assert_eq!((code, out.as_str()), (1, "no"), "{err}");
    let (code, _, err) = kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "bot-edit",
            "--clusterrole=edit",
            "--serviceaccount=apps:bot",
            "-n",
            "apps",
        ],
    );
    assert_eq!(code, 0, "{err}");
    s.eventually("the service account may create pods in apps", async || {
        kubectl(&bot, &["auth", "can-i", "create", "pods", "-n", "apps"]).1 == "yes"
    })
    .await;
    assert_eq!(
        kubectl(&bot, &["auth", "can-i", "create", "pods", "-n", "default"]).1,
        "no"
    );
    let (code, out, err) = kubectl(
        &bot,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "system:serviceaccount:apps:bot"),
        "{err}"
    );
    // Impersonation: the admin may, and gets the impersonated user's answer; alice may not.
    let (code, out, err) = kubectl(
        &admin,
        &[
            "auth",
            "can-i",
            "create",
            "pods",
            "-n",
            "default",
            "--as=system:serviceaccount:apps:bot",
        ],
    );
    assert_eq!((code, out.as_str()), (1, "no"), "{err}");
    let (code, out, err) = kubectl(
        &admin,
        &[
            "auth",
            "can-i",
            "create",
            "pods",
            "-n",
            "apps",
            "--as=system:serviceaccount:apps:bot",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "yes"), "{err}");
    let (code, _, err) = kubectl(&alice, &["get", "pods", "--as=root"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot impersonate resource \"users\""),
        "{err}"
    );
    let (code, out, err) = kubectl(&alice, &["auth", "whoami"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice"), "{out}");
    let (code, _, err) = kubectl(&admin, &["create", "namespace", "team"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kubectl(
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-edit",
            "--clusterrole=edit",
            "--user=alice",
            "-n",
            "team",
        ],
    );
    assert_eq!(code, 0, "{err}");
    s.eventually("alice may create pods in team", async || {
        kubectl(&alice, &["auth", "can-i", "create", "pods", "-n", "team"]).1 == "yes"
    })
    .await;
    assert_eq!(
        kubectl(
            &alice,
            &["auth", "can-i", "create", "pods", "-n", "default"]
        )
        .1,
        "no"
    );
    let (code, out, err) = kubectl(&alice, &["auth", "can-i", "--list", "-n", "team"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pods") && out.contains("selfsubjectaccessreviews"),
        "{out}"
    );
    let (code, out, _) = kubectl(
        &admin,
        &[
            "get",
            "clusterrolebindings",
            "system:node-proxier",
            "-o",
            "jsonpath={.subjects[0].name}",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "system:kube-proxy"));
    let (code, out, err) = kubectl(&admin, &["get", "rolebindings", "-n", "team", "-o", "wide"]);
    assert_eq!(code, 0, "{err}");
    let row = out.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cells.first(), cells.get(1), cells.get(3)),
        (
            Some(&"alice-edit"),
            Some(&"ClusterRole/edit"),
            Some(&"alice")
        ),
        "{out}"
    );
    let (code, _, err) = kubectl(
        &admin,
        &[
            "create",
            "clusterrole",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    );
    assert_eq!(code, 0, "{err}");
    s.server.stop().await;
}
