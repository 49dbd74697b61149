//! TLS, authentication (tokens, basic auth, client certificates), authorization and admission
//! on the secure port.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use xkube_apiserver::AuthorizationMode;
use xkube_apiserver::testing::TestServer;

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_basic_auth_client_certs_and_abac() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "admintoken,alice,1,\"ops\"\nreadtoken,bob,2\n").expect("write");
    let basic = dir.path().join("basic.csv");
    std::fs::write(&basic, "pw,carol,3\n").expect("write");
    let policy = dir.path().join("abac.jsonl");
    std::fs::write(
        &policy,
        concat!(
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"group": "ops", "namespace": "*", "resource": "*", "apiGroup": "*"}}"#, "\n",
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "bob", "namespace": "default", "resource": "pods", "apiGroup": "*", "readonly": true}}"#, "\n",
            r#"{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"user": "*", "nonResourcePath": "*", "readonly": true}}"#, "\n",
        ),
    )
    .expect("write");
    let data = dir.path().join("data");
    let (t, b, p) = (tokens.clone(), basic.clone(), policy.clone());
    let server = TestServer::builder(&data)
        .secure()
        .options(move |o| {
            o.token_auth_file = Some(t);
            o.basic_auth_file = Some(b);
            o.authorization_mode = vec![AuthorizationMode::Abac];
            o.authorization_policy_file = Some(p);
            o.admission_control = vec!["NamespaceLifecycle".into(), "SecurityContextDeny".into()];
        })
        .start()
        .await
        .expect("starts");
    let addr = server.secure_addr.expect("secure");
    let ca = std::fs::read(server.ca_cert.as_ref().expect("ca")).expect("ca pem");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = |p: &str| format!("https://127.0.0.1:{}{p}", addr.port());
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "i"}]}});

    let (code, s) = call(&client, reqwest::Method::GET, url(pods), None, None).await;
    assert_eq!(code, 401);
    assert_eq!(s["reason"], "Unauthorized");
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url(pods),
            Some("Bearer wrong"),
            None
        )
        .await
        .0,
        401
    );
    // Health checks answer without credentials.
    assert_eq!(
        client
            .get(url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url(pods),
            Some("Basic Y2Fyb2w6bm8="),
            None
        )
        .await
        .0,
        401
    );

    // alice (group ops) may do anything.
    let (code, _) = call(
        &client,
        reqwest::Method::POST,
        url(pods),
        Some("Bearer admintoken"),
        Some(pod.clone()),
    )
    .await;
    assert_eq!(code, 201);
    // bob may read pods in default, not write them, not read secrets.
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url(pods),
            Some("Bearer readtoken"),
            None
        )
        .await
        .0,
        200
    );
    let (code, s) = call(
        &client,
        reqwest::Method::DELETE,
        url(&format!("{pods}/p")),
        Some("Bearer readtoken"),
        None,
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        s["message"],
        "pods \"p\" is forbidden: User \"bob\" cannot delete resource \"pods\" in API group \"\" in the namespace \"default\": No policy matched."
    );
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url("/api/v1/namespaces/default/secrets"),
            Some("Bearer readtoken"),
            None
        )
        .await
        .0,
        403
    );
    // carol (basic auth) only has the non-resource read policy.
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url("/api"),
            Some("Basic Y2Fyb2w6cHc="),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &client,
            reqwest::Method::GET,
            url(pods),
            Some("Basic Y2Fyb2w6cHc="),
            None
        )
        .await
        .0,
        403
    );

    // The admin client certificate (CN=admin, O=system:masters) from the data dir.
    let mut pem = std::fs::read(data.join("pki/admin.crt")).expect("crt");
    pem.extend(std::fs::read(data.join("pki/admin.key")).expect("key"));
    let admin = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client");
    assert_eq!(
        call(
            &admin,
            reqwest::Method::GET,
            url("/api/v1/namespaces/default/secrets"),
            None,
            None
        )
        .await
        .0,
        200
    );

    // Admission: SecurityContextDeny.
    let mut bad = pod.clone();
    bad["metadata"]["name"] = json!("root");
    bad["spec"]["securityContext"] = json!({"runAsUser": 0});
    let (code, s) = call(&admin, reqwest::Method::POST, url(pods), None, Some(bad)).await;
    assert_eq!(code, 403, "{s}");
    assert_eq!(
        s["message"],
        "pods \"root\" is forbidden: pod.Spec.SecurityContext.RunAsUser is forbidden"
    );

    // The kubeconfig written next to the PKI points at the secure port.
    let kc =
        std::fs::read_to_string(server.kubeconfig.as_ref().expect("kubeconfig")).expect("read");
    assert!(kc.contains(&format!("server: https://127.0.0.1:{}", addr.port())));
    server.stop().await;
}

#[tokio::test]
async fn always_deny_forbids_everything_and_admission_always_deny_blocks_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .secure()
        .options(|o| {
            o.authorization_mode = vec![AuthorizationMode::AlwaysDeny];
        })
        .start()
        .await
        .expect("starts");
    let ca = std::fs::read(server.ca_cert.as_ref().expect("ca")).expect("ca pem");
    let mut pem = std::fs::read(dir.path().join("pki/admin.crt")).expect("crt");
    pem.extend(std::fs::read(dir.path().join("pki/admin.key")).expect("key"));
    let tokens = dir.path().join("t.csv");
    std::fs::write(&tokens, "tok,dave,4\n").expect("write");
    // system:masters bypasses authorization, as in Kubernetes.
    let admin = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client");
    let port = server.secure_addr.expect("secure").port();
    let (code, _) = call(
        &admin,
        reqwest::Method::GET,
        format!("https://127.0.0.1:{port}/api/v1/pods"),
        None,
        None,
    )
    .await;
    assert_eq!(code, 200);
    server.stop().await;

    let server = TestServer::builder(dir.path())
        .secure()
        .options(move |o| {
            o.token_auth_file = Some(tokens);
            o.authorization_mode = vec![AuthorizationMode::AlwaysDeny];
        })
        .start()
        .await
        .expect("restarts");
    let port = server.secure_addr.expect("secure").port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
        .build()
        .expect("client");
    let (code, _) = call(
        &client,
        reqwest::Method::GET,
        format!("https://127.0.0.1:{port}/api/v1/pods"),
        Some("Bearer tok"),
        None,
    )
    .await;
    assert_eq!(code, 403);
    server.stop().await;

    let api =
        common::start_with(|b| b.options(|o| o.admission_control = vec!["AlwaysDeny".into()]))
            .await;
    let (code, s) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
        )
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        s["message"],
        "configmaps \"x\" is forbidden: admission control is denying all modifications"
    );
    api.stop().await;
}
