//! Admission plugins (ResourceQuota, LimitRanger, ServiceAccount) and service-account token
//! authentication against an in-process apiserver.

mod common;

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use xkube_apiserver::AuthorizationMode;
use xkube_apiserver::satoken::{Claims, KEY_FILE, Signer};

fn chain(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod_with(name: &str, resources: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "nginx", "resources": resources}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_pod_over_a_two_pod_quota_is_forbidden_with_kubernetes_message() {
    let api = common::start_with(|b| {
        b.options(|o| o.admission_control = chain(&["NamespaceLifecycle", "ResourceQuota"]))
    })
    .await;
    let (code, body) = api
        .post(
            "/api/v1/namespaces/default/resourcequotas",
            &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"},
                    "spec": {"hard": {"pods": "2", "configmaps": "1"}}}),
        )
        .await;
    assert_eq!(code, 201, "quota created: {body}");
    for name in ["p1", "p2"] {
        let (code, body) = api.post(PODS, &common::pod(name, json!({}))).await;
        assert_eq!(code, 201, "{name} fits the quota: {body}");
    }
    let (code, body) = api.post(PODS, &common::pod("p3", json!({}))).await;
    assert_eq!(code, 403, "third pod refused: {body}");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "pods \"p3\" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
    );
    // Admission recorded the usage it charged.
    let (_, q) = api.get("/api/v1/namespaces/default/resourcequotas/q").await;
    assert_eq!(q["status"]["used"]["pods"], "2", "status.used: {q}");
    assert_eq!(q["status"]["hard"]["pods"], "2");

    // A finished pod stops counting; a deleted one frees its slot.
    let (code, _) = api
        .patch(
            &format!("{PODS}/p1/status"),
            "application/merge-patch+json",
            &json!({"status": {"phase": "Succeeded"}}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = api.post(PODS, &common::pod("p3", json!({}))).await;
    assert_eq!(code, 201, "a finished pod does not count: {body}");

    // Other resources: configmaps=1.
    let cm = |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}});
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(api.post(cms, &cm("a")).await.0, 201);
    let (code, body) = api.post(cms, &cm("b")).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps \"b\" is forbidden: exceeded quota: q, requested: configmaps=1, used: configmaps=1, limited: configmaps=1"
    );
    // kubectl get quota: REQUEST used/hard from the status admission keeps current.
    let table: Value = api
        .http
        .get(api.url("/api/v1/namespaces/default/resourcequotas"))
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .send()
        .await
        .expect("table")
        .json()
        .await
        .expect("json");
    assert_eq!(
        table["rows"][0]["cells"][2], "configmaps: 1/1, pods: 2/2",
        "{table}"
    );
    // Namespaces without quotas are not limited.
    let (code, _) = api
        .post(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "free"}}),
        )
        .await;
    assert_eq!(code, 201);
    for i in 0..3 {
        let (code, _) = api
            .post("/api/v1/namespaces/free/configmaps", &cm(&format!("c{i}")))
            .await;
        assert_eq!(code, 201);
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_do_not_overshoot_the_quota() {
    let api = common::start_with(|b| {
        b.options(|o| o.admission_control = chain(&["NamespaceLifecycle", "ResourceQuota"]))
    })
    .await;
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/resourcequotas",
            &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "five"},
                    "spec": {"hard": {"pods": "5", "requests.cpu": "2"}}}),
        )
        .await;
    assert_eq!(code, 201);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let http = api.http.clone();
        let url = api.url(PODS);
        tasks.push(tokio::spawn(async move {
            let pod = pod_with(&format!("c{i}"), json!({"requests": {"cpu": "100m"}}));
            let resp = http.post(url).json(&pod).send().await.expect("request");
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            (code, body)
        }));
    }
    let mut created = 0;
    let mut refused = 0;
    for t in tasks {
        let (code, body) = t.await.expect("task");
        match code {
            201 => created += 1,
            403 => {
                let msg = body["message"].as_str().unwrap_or("");
                assert!(
                    msg.contains(
                        "exceeded quota: five, requested: pods=1, used: pods=5, limited: pods=5"
                    ),
                    "message: {msg}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (5, 19), "exactly the quota is admitted");
    let (_, list) = api.get(PODS).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(5));
    let (_, q) = api
        .get("/api/v1/namespaces/default/resourcequotas/five")
        .await;
    assert_eq!(q["status"]["used"]["pods"], "5");
    assert_eq!(q["status"]["used"]["requests.cpu"], "500m");

    // Compute quotas require requests, with Kubernetes' message.
    let (code, body) = api.post(PODS, &common::pod("bare", json!({}))).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods \"bare\" is forbidden: failed quota: five: must specify requests.cpu for: c"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_range_defaults_appear_on_pods_and_bounds_reject() {
    let api = common::start_with(|b| {
        b.options(|o| {
            o.admission_control = chain(&["NamespaceLifecycle", "LimitRanger", "ResourceQuota"])
        })
    })
    .await;
    let (code, lr) = api
        .post(
            "/api/v1/namespaces/default/limitranges",
            &json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits"},
                    "spec": {"limits": [{"type": "Container",
                        "default": {"cpu": "500m", "memory": "128Mi"},
                        "defaultRequest": {"cpu": "250m"},
                        "max": {"cpu": "1", "memory": "1Gi"},
                        "min": {"cpu": "100m"}}]}}),
        )
        .await;
    assert_eq!(code, 201, "{lr}");
    assert_eq!(
        lr["spec"]["limits"][0]["defaultRequest"],
        json!({"cpu": "250m", "memory": "128Mi"}),
        "LimitRange defaulting"
    );
    // A quota on requests.cpu is satisfied by the defaults (LimitRanger runs first).
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/resourcequotas",
            &json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cpu"},
                    "spec": {"hard": {"requests.cpu": "1"}}}),
        )
        .await;
    assert_eq!(code, 201);
    let (code, pod) = api.post(PODS, &common::pod("plain", json!({}))).await;
    assert_eq!(code, 201, "{pod}");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "500m", "memory": "128Mi"},
               "requests": {"cpu": "250m", "memory": "128Mi"}})
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    assert_eq!(pod["status"]["qosClass"], "Burstable");
    let (_, stored) = api.get(&format!("{PODS}/plain")).await;
    assert_eq!(
        stored["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "500m"
    );

    let (code, body) = api
        .post(PODS, &pod_with("big", json!({"limits": {"cpu": "2"}})))
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"
    );
    let (code, body) = api
        .post(
            PODS,
            &pod_with(
                "tiny",
                json!({"requests": {"cpu": "50m"}, "limits": {"cpu": "50m"}}),
            ),
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods \"tiny\" is forbidden: minimum cpu usage per Container is 100m, but request is 50m"
    );
    api.stop().await;
}

/// Creates account `name` in `default` with a token secret signed by the server's key, and
/// returns the token.
async fn account_with_token(api: &common::Api, name: &str, image_pull: Option<&str>) -> String {
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
    if let Some(p) = image_pull {
        sa["imagePullSecrets"] = json!([{"name": p}]);
    }
    let (code, sa) = api
        .post("/api/v1/namespaces/default/serviceaccounts", &sa)
        .await;
    assert_eq!(code, 201, "{sa}");
    let uid = sa["metadata"]["uid"].as_str().expect("uid").to_string();
    let secret_name = format!("{name}-token-abcde");
    let signer = Signer::from_file(&api.dir.path().join(KEY_FILE)).expect("server's key");
    let token = signer
        .sign(&Claims::new("default", name, &uid, &secret_name))
        .expect("signed");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (code, body) = api
        .post(
            "/api/v1/namespaces/default/secrets",
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                    "metadata": {"name": secret_name, "annotations": {
                        "kubernetes.io/service-account.name": name,
                        "kubernetes.io/service-account.uid": uid}},
                    "data": {"token": b64(&token), "namespace": b64("default"), "ca.crt": b64("CA")}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = api
        .patch(
            &format!("/api/v1/namespaces/default/serviceaccounts/{name}"),
            "application/merge-patch+json",
            &json!({"secrets": [{"name": secret_name}]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_admission_defaults_mounts_and_rejects_missing_accounts() {
    let api = common::start_with(|b| {
        b.options(|o| o.admission_control = chain(&["NamespaceLifecycle", "ServiceAccount"]))
    })
    .await;
    account_with_token(&api, "default", Some("registry-creds")).await;
    let (code, pod) = api.post(PODS, &common::pod("web", json!({}))).await;
    assert_eq!(code, 201, "{pod}");
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    assert_eq!(
        pod["spec"]["volumes"],
        json!([{"name": "default-token-abcde",
                "secret": {"secretName": "default-token-abcde", "defaultMode": 420}}])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": "default-token-abcde", "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}])
    );
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "registry-creds"}])
    );

    // automountServiceAccountToken: false leaves the pod without the token.
    let mut no_token = common::pod("quiet", json!({}));
    no_token["spec"]["automountServiceAccountToken"] = json!(false);
    let (code, pod) = api.post(PODS, &no_token).await;
    assert_eq!(code, 201);
    assert!(pod["spec"]["volumes"].is_null(), "{pod}");

    let mut missing = common::pod("lost", json!({}));
    missing["spec"]["serviceAccountName"] = json!("ghost");
    let (code, body) = api.post(PODS, &missing).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods \"lost\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
    );

    // An account without a token yet: Kubernetes' retryable error.
    let (code, _) = api
        .post(
            "/api/v1/namespaces/default/serviceaccounts",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "fresh"}}),
        )
        .await;
    assert_eq!(code, 201);
    let mut fresh = common::pod("fresh", json!({}));
    fresh["spec"]["serviceAccountName"] = json!("fresh");
    let (code, body) = api.post(PODS, &fresh).await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(body["reason"], "ServerTimeout");
    assert_eq!(
        body["message"],
        "No API token found for service account \"fresh\", retry after the token is automatically created and added to the service account"
    );
    api.stop().await;
}

async fn call(client: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_the_account_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.jsonl");
    std::fs::write(
        &policy,
        concat!(
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "system:serviceaccount:default:robot", "namespace": "default", "resource": "pods", "apiGroup": "*", "readonly": true}}"#,
            "\n",
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "system:serviceaccounts:default", "nonResourcePath": "*", "readonly": true}}"#,
            "\n",
        ),
    )
    .expect("policy");
    let api = common::start_with(|b| {
        b.secure().options(move |o| {
            o.authorization_mode = vec![AuthorizationMode::Abac];
            o.authorization_policy_file = Some(policy);
        })
    })
    .await;
    let token = account_with_token(&api, "robot", None).await;
    let ca = std::fs::read(api.server.ca_cert.as_ref().expect("ca")).expect("ca pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let port = api.server.secure_addr.expect("secure").port();
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");

    let (code, body) = call(&client, url(PODS), &token).await;
    assert_eq!(code, 200, "the account's policy admits it: {body}");
    let (code, _) = call(&client, url("/api"), &token).await;
    assert_eq!(code, 200, "the namespace's service-account group");
    let (code, body) = call(&client, url("/api/v1/namespaces/kube-system/pods"), &token).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\": No policy matched."
    );
    // A token signed by another key, and a tampered one, are refused.
    let (code, _) = call(&client, url(PODS), &format!("{token}x")).await;
    assert_eq!(code, 401);

    let (code, _) = api
        .delete("/api/v1/namespaces/default/serviceaccounts/robot")
        .await;
    assert_eq!(code, 200);
    let (code, body) = call(&client, url(PODS), &token).await;
    assert_eq!(code, 401, "deleted account: {body}");
    assert_eq!(body["reason"], "Unauthorized");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_the_controller_manager_authenticate_and_are_mounted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.jsonl");
    std::fs::write(
        &policy,
        concat!(
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "system:serviceaccount:default:default", "namespace": "default", "resource": "pods", "apiGroup": "*", "readonly": true}}"#,
            "\n",
        ),
    )
    .expect("policy");
    let api = common::start_with(|b| {
        b.secure().options(move |o| {
            o.authorization_mode = vec![AuthorizationMode::Abac];
            o.authorization_policy_file = Some(policy);
            o.admission_control = chain(&[
                "NamespaceLifecycle",
                "NamespaceExists",
                "ServiceAccount",
                "LimitRanger",
                "ResourceQuota",
            ]);
        })
    })
    .await;
    // The controller-manager shares the data dir: it signs with the key the apiserver made.
    let opts = xkube_controllers::Options {
        controllers: vec!["serviceaccount".into(), "serviceaccount-token".into()],
        data_dir: api.dir.path().to_path_buf(),
        root_ca_file: Some(api.dir.path().join("pki/ca.crt")),
        ..xkube_controllers::Options::default()
    };
    let client = xkube_client::Client::from_flags(None, Some(&api.base)).expect("client");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cm = tokio::spawn({
        let s = shutdown.clone();
        async move { xkube_controllers::run(opts, client, s).await }
    });

    // The pod waits in admission for the default account and its token.
    let (code, pod) = api.post(PODS, &common::pod("web", json!({}))).await;
    assert_eq!(code, 201, "{pod}");
    let volume = pod["spec"]["volumes"][0].clone();
    let secret_name = volume["secret"]["secretName"]
        .as_str()
        .unwrap_or_else(|| panic!("token volume: {pod}"))
        .to_string();
    assert!(secret_name.starts_with("default-token-"), "{secret_name}");
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    let (code, secret) = api
        .get(&format!("/api/v1/namespaces/default/secrets/{secret_name}"))
        .await;
    assert_eq!(code, 200);
    let decode = |k: &str| {
        let b = base64::engine::general_purpose::STANDARD
            .decode(
                secret["data"][k]
                    .as_str()
                    .unwrap_or_else(|| panic!("{k} in {secret}")),
            )
            .expect("base64");
        String::from_utf8(b).expect("utf-8")
    };
    assert_eq!(decode("namespace"), "default");
    assert!(decode("ca.crt").contains("BEGIN CERTIFICATE"));
    let token = decode("token");

    let ca = std::fs::read(api.server.ca_cert.as_ref().expect("ca")).expect("ca pem");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let port = api.server.secure_addr.expect("secure").port();
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let (code, body) = call(&https, url(PODS), &token).await;
    assert_eq!(
        code, 200,
        "the token authenticates as the default account: {body}"
    );
    let (code, body) = call(&https, url("/api/v1/namespaces/default/secrets"), &token).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("User \"system:serviceaccount:default:default\"")),
        "{body}"
    );
    shutdown.cancel();
    let _ = cm.await;
    api.stop().await;
}
