//! Issue 21 on `xkube cluster up --runtime docker --registry --registry-htpasswd`: an image
//! built in a node's engine and pushed to the cluster's registry (basic auth) runs as a pod by
//! its registry name, pulled with an imagePullSecret (Pulling/Pulled events with the size),
//! also through the service account's imagePullSecrets, and is refused without credentials
//! (ErrImagePull -> ImagePullBackOff with the registry's message); `imagePullPolicy: Never`
//! with the image absent is ErrImageNeverPull; `cluster load-image` copies an engine's image
//! and a `docker save` archive into every node; `cluster exec node1 -- curl <ClusterIP>`
//! reaches a service through the socket load balancer.

use std::{path::PathBuf, process::Command, time::Duration};

use xkube_e2e::Cluster;

const USER: &str = "pusher";
const PASSWORD: &str = "s3cret-pw";
const REGISTRY: &str = "198.18.0.3:5000";

fn docker_socket(c: &Cluster, i: usize) -> String {
    format!(
        "unix://{}",
        c.data_root
            .join(&c.name)
            .join(format!("{}-docker.sock", c.node_name(i)))
            .display()
    )
}

/// The docker CLI against node `i`'s engine, with a client configuration of its own (the
/// host's ~/.docker is not touched).
fn docker(c: &Cluster, i: usize, config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/docker")
        .arg("-H")
        .arg(docker_socket(c, i))
        .args(args)
        .env("DOCKER_CONFIG", config)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xkube(c: &Cluster, args: &[&str]) -> std::process::Output {
    Command::new(xkube_e2e::xkube_bin())
        .args(["cluster"])
        .args(&args[..1])
        .args(["--name", &c.name])
        .arg("--data-root")
        .arg(&c.data_root)
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("xkube cluster {args:?}: {e}"))
}

fn waiting(c: &Cluster, pod: &str) -> (String, String) {
    let p = c.get_json(&["pod", pod]);
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    (
        w["reason"].as_str().unwrap_or_default().to_owned(),
        w["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn events(c: &Cluster, pod: &str) -> String {
    c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
    ])
}

fn running(c: &Cluster, pod: &str) {
    c.wait(&format!("{pod} Running"), Duration::from_secs(60), || {
        (c.get_json(&["pod", pod])["status"]["phase"] == "Running").then_some(())
    });
}

#[test]
fn privileged_cluster_images_registry_load_image_and_exec() {
    let work = tempfile::tempdir().expect("tempdir");
    let htpasswd = work.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .expect("htpasswd (apache2-utils, installed by cargo xtask setup)");
    assert!(out.status.success());
    std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
    let c = Cluster::up(
        2,
        &[
            "--runtime",
            "docker",
            "--registry",
            "--registry-htpasswd",
            htpasswd.to_str().expect("utf-8 path"),
        ],
    );
    let config = work.path().join("docker-config");
    std::fs::create_dir_all(&config).expect("docker config dir");

    // An image built in node1's engine, pushed (with credentials) and removed again.
    let image = format!("{REGISTRY}/team/hello:1");
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("context dir");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM xkube/tools:latest\nCMD [\"sh\", \"-c\", \"echo hello from the registry; sleep 3600\"]\n",
    )
    .expect("Dockerfile");
    docker(
        &c,
        0,
        &config,
        &["build", "-q", "-t", &image, ctx.to_str().expect("utf-8")],
    );
    docker(
        &c,
        0,
        &config,
        &["login", REGISTRY, "-u", USER, "-p", PASSWORD],
    );
    docker(&c, 0, &config, &["push", "-q", &image]);
    docker(&c, 0, &config, &["rmi", &image]);

    // Without credentials the registry refuses the pull.
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: noauth}}\nspec:\n  containers:\n  - {{name: c, image: \"{image}\"}}\n"
    ));
    let (reason, message) = c.wait(
        "noauth in ImagePullBackOff",
        Duration::from_secs(60),
        || {
            let w = waiting(&c, "noauth");
            (w.0 == "ImagePullBackOff").then_some(w)
        },
    );
    assert!(
        message.contains("no basic auth credentials"),
        "{reason}: {message}"
    );
    let ev = events(&c, "noauth");
    assert!(ev.contains(&format!("Pulling image \"{image}\"")), "{ev}");
    assert!(
        ev.contains(&format!("Failed to pull image \"{image}\"")),
        "{ev}"
    );

    // With the secret: pulled, events with the durations and the size.
    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={REGISTRY}"),
        &format!("--docker-username={USER}"),
        &format!("--docker-password={PASSWORD}"),
    ]);
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: withsecret}}\nspec:\n  imagePullSecrets: [{{name: regcred}}]\n  containers:\n  - {{name: c, image: \"{image}\"}}\n"
    ));
    running(&c, "withsecret");
    let logs = c.wait("the pulled image's output", Duration::from_secs(30), || {
        let l = c.kubectl_ok(&["logs", "withsecret"]);
        l.contains("hello from the registry").then_some(l)
    });
    assert_eq!(logs.trim(), "hello from the registry");
    let ev = events(&c, "withsecret");
    let pulled = ev
        .lines()
        .find(|l| l.contains("Successfully pulled image"))
        .unwrap_or_else(|| panic!("no Pulled event: {ev}"));
    assert!(
        pulled.contains(&format!("Successfully pulled image \"{image}\" in "))
            && pulled.contains(" including waiting). Image size: ")
            && pulled.ends_with(" bytes."),
        "{pulled}"
    );
    println!("{pulled}");

    // Through the service account: admission copies its imagePullSecrets into the pod. The
    // pod goes to the other node, which has not pulled the image yet.
    c.kubectl_ok(&[
        "patch",
        "serviceaccount",
        "default",
        "-p",
        r#"{"imagePullSecrets": [{"name": "regcred"}]}"#,
    ]);
    let node2 = c.node_name(1);
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: viasa}}\nspec:\n  nodeName: {node2}\n  containers:\n  - {{name: c, image: \"{image}\"}}\n"
    ));
    running(&c, "viasa");

    // Always pulls an image the node has too: with the account's secret it is pulled again,
    // and in a namespace whose account has none it is refused although the node has it.
    let there = c.get_json(&["pod", "withsecret"])["spec"]["nodeName"]
        .as_str()
        .expect("withsecret is scheduled")
        .to_owned();
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: again}}\nspec:\n  nodeName: {there}\n  containers:\n  - {{name: c, image: \"{image}\", imagePullPolicy: Always}}\n"
    ));
    running(&c, "again");
    let ev = events(&c, "again");
    assert!(
        ev.contains(&format!("Successfully pulled image \"{image}\"")),
        "{ev}"
    );
    assert!(!ev.contains("already present"), "{ev}");
    c.kubectl_ok(&["create", "namespace", "nocreds"]);
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: stale, namespace: nocreds}}\nspec:\n  nodeName: {there}\n  containers:\n  - {{name: c, image: \"{image}\", imagePullPolicy: Always}}\n"
    ));
    c.wait(
        "nocreds/stale refused though the node has the image",
        Duration::from_secs(60),
        || {
            let p = c.get_json(&["pod", "stale", "-n", "nocreds"]);
            (p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                == "ImagePullBackOff")
                .then_some(())
        },
    );

    // Never, and the image is absent: ErrImageNeverPull with Kubernetes' message.
    let absent = format!("{REGISTRY}/team/absent:1");
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: never}}\nspec:\n  containers:\n  - {{name: c, image: \"{absent}\", imagePullPolicy: Never}}\n"
    ));
    let (_, message) = c.wait(
        "never in ErrImageNeverPull",
        Duration::from_secs(60),
        || {
            let w = waiting(&c, "never");
            (w.0 == "ErrImageNeverPull").then_some(w)
        },
    );
    assert_eq!(
        message,
        format!("Container image \"{absent}\" is not present with pull policy of Never")
    );
    let table = c.kubectl_ok(&["get", "pod", "never"]);
    assert!(table.contains("ErrImageNeverPull"), "{table}");

    // load-image: an image of one engine (by name) and a `docker save` archive reach every
    // node; pods that may not pull run on each.
    docker(
        &c,
        0,
        &config,
        &["tag", "xkube/tools:latest", "example/loaded:1"],
    );
    docker(
        &c,
        0,
        &config,
        &["tag", "xkube/tools:latest", "example/archived:1"],
    );
    let archive: PathBuf = work.path().join("archived.tar");
    docker(
        &c,
        0,
        &config,
        &[
            "save",
            "-o",
            archive.to_str().expect("utf-8"),
            "example/archived:1",
        ],
    );
    docker(&c, 0, &config, &["rmi", "example/archived:1"]);
    let out = xkube(
        &c,
        &[
            "load-image",
            "--docker-host",
            &docker_socket(&c, 0),
            "example/loaded:1",
            archive.to_str().expect("utf-8"),
        ],
    );
    assert!(
        out.status.success(),
        "load-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Loaded image: example/archived:1"), "{said}");
    for i in 0..c.nodes {
        for img in ["example/loaded:1", "example/archived:1"] {
            let name = format!("l{i}-{}", img.split(['/', ':']).nth(1).unwrap_or("x"));
            c.apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {}\n  containers:\n  - {{name: c, image: \"{img}\", imagePullPolicy: Never}}\n",
                c.node_name(i)
            ));
            running(&c, &name);
        }
    }
    let out = xkube(&c, &["load-image", "/nonexistent/nothing.tar"]);
    assert!(!out.status.success());

    // cluster exec: a node's host process reaches a ClusterIP through the socket LB.
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  containers:\n  - {name: c, image: \"xkube/agnhost:0.1.0\", args: [\"netexec\", \"--http-port=8080\"]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {port: 80, targetPort: 8080}\n",
    );
    running(&c, "web");
    let cip = c.get_json(&["svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_owned();
    let answer = c.wait("the ClusterIP from node1", Duration::from_secs(30), || {
        let out = xkube(
            &c,
            &[
                "exec",
                "node1",
                "--",
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{cip}/hostname"),
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(answer.trim(), "web");
    // The exit code of the command is the exit code of `cluster exec`.
    let out = xkube(&c, &["exec", "node2", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = xkube(&c, &["exec", "node9", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no node \"node9\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
