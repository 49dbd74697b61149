//! An in-process apiserver (memory store, TLS) for trying xkubectl and kubectl by hand:
//! `cargo run -p xkube-cli --example devserver -- /tmp/dir`, then
//! `xkubectl --kubeconfig /tmp/dir/admin.kubeconfig get ns`. Stops on Ctrl-C.

use xkube_apiserver::testing::TestServer;

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/xkube-devserver".into());
    let server = match TestServer::builder(&dir).memory().secure().start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Some(k) = &server.kubeconfig {
        println!("kubeconfig: {}", k.display());
    }
    if let Some(u) = server.http_url() {
        println!("plain http: {u}");
    }
    let _ = tokio::signal::ctrl_c().await;
    server.stop().await;
}
