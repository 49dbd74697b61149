//! `xkube bench --quick` end to end (root): every (mode, services, route, workload) cell has
//! samples, the report has its tables and every plot is an SVG document.

use std::process::Command;

use xkube_e2e::{require_root, xkube_bin};

#[test]
fn privileged_bench_quick_measures_every_cell_and_writes_the_report() {
    require_root();
    let out = std::env::temp_dir().join(format!("xkube-bench-quick-{}", std::process::id()));
    let name = format!("xb{}", std::process::id() % 100_000);
    let run = Command::new(xkube_bin())
        .args(["bench", "--quick", "--name", &name, "--out"])
        .arg(&out)
        .output()
        .expect("xkube bench");
    assert!(
        run.status.success(),
        "xkube bench --quick failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("results.json parses");
    let modes = ["none", "ebpf", "iptables", "nftables", "userspace"];
    assert_eq!(results["modes"], serde_json::json!(modes));
    let services: Vec<u64> = results["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(services, [4, 100]);
    let cells = results["cells"].as_array().expect("cells");
    // none: 5 pod + 6 host cells; every proxy mode: those and 4 NodePort cells; per service
    // count.
    assert_eq!(cells.len(), 2 * (11 + 4 * 15), "{results:#}");
    for c in cells {
        assert!(
            c["summary"]["ok"].as_u64().unwrap_or(0) > 0,
            "no samples: {c}"
        );
        assert!(c["summary"]["p99_us"].as_u64().unwrap_or(0) > 0, "{c}");
    }
    let costs = results["costs"].as_array().expect("costs");
    assert_eq!(costs.len(), 2 * 4);
    assert!(
        costs
            .iter()
            .all(|c| c["cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0),
        "{costs:?}"
    );
    let prog = results["programming"].as_array().expect("programming");
    assert_eq!(prog.len(), 2 * 4);
    assert!(
        prog.iter().all(|p| p["summary"]["ok"].as_u64() == Some(3)),
        "{prog:?}"
    );
    let changes = results["endpoint_changes"]
        .as_array()
        .expect("endpoint_changes");
    assert_eq!(changes.len(), 2 * 4);
    assert!(
        changes
            .iter()
            .all(|c| c["outside"]["ok"].as_u64() == Some(3)
                && c["proxy_observations"].as_u64().unwrap_or(0) > 0),
        "{changes:?}"
    );
    // Every proxy mode at every service count starts from a restart with every service.
    let resyncs = results["resyncs"].as_array().expect("resyncs");
    assert_eq!(resyncs.len(), 2 * 4);
    assert!(
        resyncs
            .iter()
            .all(|x| x["restart_to_serving_s"].as_f64().unwrap_or(0.0) > 0.0
                && x["proxy_full_syncs"].as_u64().unwrap_or(0) > 0),
        "{resyncs:?}"
    );
    let per_packet = results["per_packet"].as_array().expect("per_packet");
    assert_eq!(per_packet.len(), 2);
    assert!(
        per_packet.iter().all(
            |p| p["bare_xdp_pass"]["median"].as_f64().unwrap_or(0.0) > 0.0
                && p["xdp_service"]["median"].as_f64().unwrap_or(0.0) > 0.0
        ),
        "{per_packet:?}"
    );
    assert_eq!(results["targets"].as_array().map(Vec::len), Some(4));
    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    for heading in [
        "## Request/response, keep-alive, 1 client",
        "## Cost",
        "## Programming",
        "## Endpoint change",
        "## Full resync",
        "## Per packet (eBPF)",
        "## Targets",
    ] {
        assert!(report.contains(heading), "{report}");
    }
    for svg in [
        "latency_p50_rr.svg",
        "latency_p99_rr.svg",
        "new_connections.svg",
        "cpu_per_1000.svg",
        "programming_p99.svg",
    ] {
        let text = std::fs::read_to_string(out.join(svg)).expect(svg);
        assert!(
            text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(
            modes.iter().all(|m| text.contains(m)),
            "{svg}: a line per mode"
        );
    }
    std::fs::remove_dir_all(&out).expect("cleanup");
    // The bench removed its cluster.
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.contains(&name)),
        "namespaces left: {left:?}"
    );
}
