//! The official Python `kubernetes` client as a second real client. `cargo xtask setup`
//! installs it into a venv and `cargo xtask test` points `XKUBE_PYTHON` at it (default
//! `python3`); without the module the test fails with that hint instead of passing silently.

use std::time::Duration;

use xkube_apiserver::testing::TestServer;

/// Runs `tests/py/<script>` with the official client against a fresh secure apiserver.
async fn run_python(script: &str) {
    let python = std::env::var("XKUBE_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_module = std::process::Command::new(&python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_module,
        "{python} cannot import kubernetes: run `cargo xtask setup` and set XKUBE_PYTHON to \
         ~/.local/xkube-venv/bin/python (cargo xtask test does both)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::builder(dir.path())
        .secure()
        .start()
        .await
        .expect("starts");
    let script = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let kubeconfig = server.kubeconfig.clone().expect("kubeconfig");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client timed out")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok"), "{stdout}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client() {
    run_python("client.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client_apps_and_batch() {
    run_python("apps_batch.py").await;
}
