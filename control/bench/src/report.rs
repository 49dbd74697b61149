//! `results.json` (every cell's summary and the machine facts), `report.md` (tables, ratios to
//! `none` and to `iptables`) and the SVG plots. Pure apart from writing the files.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{load::Workload, stats::Summary};

/// Where the traffic goes from and to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// A pod on node1 to the ClusterIP of a backend on node1 (`none`: its pod IP).
    PodToLocal,
    /// A pod on node1 to the ClusterIP of a backend on node2 (`none`: its pod IP).
    PodToRemote,
    /// A host process of node1 to the ClusterIP of a backend on node1 (`none`: its pod IP).
    HostToLocal,
    /// A host process of node1 to the ClusterIP of a backend on node2 (`none`: its pod IP).
    HostToRemote,
    /// The external client to node1's NodePort, backend on node1.
    NodePortLocal,
    /// The external client to node1's NodePort, backend on node2.
    NodePortRemote,
}

impl Route {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::PodToLocal => "node1 pod -> ClusterIP, backend on node1",
            Self::PodToRemote => "node1 pod -> ClusterIP, backend on node2",
            Self::HostToLocal => "node1 host -> ClusterIP, backend on node1",
            Self::HostToRemote => "node1 host -> ClusterIP, backend on node2",
            Self::NodePortLocal => "client -> node1 NodePort, backend on node1",
            Self::NodePortRemote => "client -> node1 NodePort, backend on node2",
        }
    }
}

/// One measured (mode, services, route, workload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub mode: String,
    pub services: usize,
    pub route: Route,
    pub workload: Workload,
    pub summary: Summary,
}

/// CPU of the nodes (their cgroups and the machine's softirq) during a NodePort-to-remote
/// keep-alive run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub mode: String,
    pub services: usize,
    pub requests: u64,
    pub cpu_seconds: f64,
    pub cpu_per_1000: f64,
    /// Requests per node CPU second.
    pub requests_per_cpu_second: f64,
    /// The agents' resident memory, KiB (node1, node2).
    pub agent_rss_kib: Vec<u64>,
}

/// Service created -> first successful connection from node1's host, microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Programming {
    pub mode: String,
    pub services: usize,
    pub summary: Summary,
}

/// One Endpoints change (the service's only endpoint replaced by the other backend) ->
/// applied: from the outside (until a new connection from node1's host reaches the new
/// backend) and from node1's proxy (`kubeproxy_network_programming_duration_seconds`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointChange {
    pub mode: String,
    pub services: usize,
    /// Microseconds, from the update request to the first answer of the new backend.
    pub outside: Summary,
    /// Mean of the proxy's observations during the samples, ms (none when it made none).
    pub proxy_mean_ms: Option<f64>,
    pub proxy_observations: u64,
}

/// A full resync with every service: an agent restarted into the mode, until the bench's
/// NodePort answers from the external client (outside), and the proxy's full syncs
/// (`kubeproxy_sync_full_proxy_rules_duration_seconds` of node1, since that start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    pub mode: String,
    pub services: usize,
    pub restart_to_serving_s: f64,
    pub proxy_full_sync_mean_ms: Option<f64>,
    pub proxy_full_syncs: u64,
}

/// One of issue 16's targets, a ratio measured in this run at the largest service count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub services: usize,
    /// The measured ratio (none when a side is missing).
    pub ratio: Option<f64>,
    /// `>= goal` or `<= goal`, as `at_least` says.
    pub goal: f64,
    pub at_least: bool,
    pub met: bool,
}

/// The targets at the largest service count of the run.
pub fn targets(r: &Results) -> Vec<Target> {
    let Some(&n) = r.services.iter().max() else {
        return Vec::new();
    };
    let cell = |m: &str, route, w| r.cell(m, n, route, w);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let rate = |m: &str| cell(m, Route::PodToRemote, Workload::Crr).map(|s| s.rate);
    let p99 = |m: &str| cell(m, Route::PodToRemote, Workload::Rr1).map(|s| s.p99_us as f64);
    let per_cpu = |m: &str| {
        r.costs
            .iter()
            .find(|c| c.mode == m && c.services == n)
            .map(|c| c.requests_per_cpu_second)
    };
    let prog = |m: &str| {
        r.programming
            .iter()
            .find(|p| p.mode == m && p.services == n && p.summary.ok > 0)
            .map(|p| p.summary.p99_us as f64)
    };
    let t = |what: &str, ratio: Option<f64>, goal: f64, at_least: bool| Target {
        what: what.to_string(),
        services: n,
        ratio,
        goal,
        at_least,
        met: ratio.is_some_and(|x| if at_least { x >= goal } else { x <= goal }),
    };
    vec![
        t(
            "eBPF new connections/s (node1 pod -> ClusterIP, backend on node2) / none",
            div(rate("ebpf"), rate("none")),
            0.95,
            true,
        ),
        t(
            "eBPF keep-alive p99 (node1 pod -> ClusterIP, backend on node2) / none",
            div(p99("ebpf"), p99("none")),
            1.05,
            false,
        ),
        t(
            "eBPF NodePort (backend on node2) requests per node CPU second / iptables",
            div(per_cpu("ebpf"), per_cpu("iptables")),
            2.0,
            true,
        ),
        t(
            "eBPF programming p99 (Service created -> first connection) / iptables",
            div(prog("ebpf"), prog("iptables")),
            0.1,
            false,
        ),
    ]
}

/// Facts about the machine and the build measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub iptables_backend: String,
    #[serde(default)]
    pub nft_version: String,
    /// The xkube binary the cluster ran and its build profile.
    pub binary: String,
    pub build: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub quick: bool,
    pub modes: Vec<String>,
    pub services: Vec<usize>,
    pub cells: Vec<Cell>,
    pub costs: Vec<Cost>,
    pub programming: Vec<Programming>,
    #[serde(default)]
    pub endpoint_changes: Vec<EndpointChange>,
    #[serde(default)]
    pub resyncs: Vec<Resync>,
    /// `BPF_PROG_TEST_RUN` per program (eBPF), for each service count (and 100k frontends).
    #[serde(default)]
    pub per_packet: Vec<xkube_proxy::ebpf::perpacket::Row>,
    /// Issue 16's targets, from the cells above ([`targets`]).
    #[serde(default)]
    pub targets: Vec<Target>,
}

impl Results {
    pub fn cell(&self, mode: &str, services: usize, route: Route, w: Workload) -> Option<&Summary> {
        self.cells
            .iter()
            .find(|c| {
                c.mode == mode && c.services == services && c.route == route && c.workload == w
            })
            .map(|c| &c.summary)
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "# xkube bench\n\n{} build (`{}`), kernel {}, {} ({} cores), iptables backend {}, {}{}.\n\
         Absolute figures are machine-specific; compare within a table (one run).\n",
        m.build,
        m.binary,
        m.kernel,
        m.cpu_model,
        m.cores,
        m.iptables_backend,
        if m.nft_version.is_empty() {
            "no nft"
        } else {
            &m.nft_version
        },
        if r.quick { ", `--quick` run" } else { "" }
    );
    let workloads: BTreeSet<Workload> = r.cells.iter().map(|c| c.workload).collect();
    for w in workloads {
        let _ = writeln!(
            out,
            "## {}\n\nrate in operations/s and p99 latency; ratios of the rate to `none` and to `iptables`\n",
            match w {
                Workload::Rr1 => "Request/response, keep-alive, 1 client",
                Workload::RrN => "Request/response, keep-alive, N clients",
                Workload::Crr =>
                    "New connection per request (connect, request, response, close), N clients",
                Workload::Udp => "UDP request/response, 1 client",
            }
        );
        let _ = writeln!(
            out,
            "| route | services | mode | ops/s | p50 µs | p99 µs | p99.9 µs | errors | vs none | vs iptables |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let routes: BTreeSet<Route> = r
            .cells
            .iter()
            .filter(|c| c.workload == w)
            .map(|c| c.route)
            .collect();
        for route in routes {
            for n in &r.services {
                for mode in &r.modes {
                    let Some(s) = r.cell(mode, *n, route, w) else {
                        continue;
                    };
                    let none = r.cell("none", *n, route, w).map(|s| s.rate);
                    let ipt = r.cell("iptables", *n, route, w).map(|s| s.rate);
                    let _ = writeln!(
                        out,
                        "| {} | {n} | {mode} | {:.0} | {} | {} | {} | {} | {} | {} |",
                        route.describe(),
                        s.rate,
                        s.p50_us,
                        s.p99_us,
                        s.p999_us,
                        s.errors,
                        ratio(s.rate, none),
                        ratio(s.rate, ipt),
                    );
                }
            }
        }
        out.push('\n');
    }
    if !r.costs.is_empty() {
        let _ = writeln!(
            out,
            "## Cost\n\nNode CPU (the nodes' cgroups and the machine's softirq) during the keep-alive \
             run from the client to node1's NodePort with the backend on node2.\n\n\
             | services | mode | requests | CPU s per 1,000 requests | requests per CPU s | vs iptables | agent RSS node1, node2 (MiB) |\n|---:|---|---:|---:|---:|---:|---|"
        );
        for c in &r.costs {
            let ipt = r
                .costs
                .iter()
                .find(|x| x.mode == "iptables" && x.services == c.services)
                .map(|x| x.requests_per_cpu_second);
            let rss: Vec<String> = c
                .agent_rss_kib
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.0} | {} | {} |",
                c.services,
                c.mode,
                c.requests,
                c.cpu_per_1000,
                c.requests_per_cpu_second,
                ratio(c.requests_per_cpu_second, ipt),
                rss.join(", ")
            );
        }
        out.push('\n');
    }
    if !r.targets.is_empty() {
        let _ = writeln!(
            out,
            "## Targets\n\nRatios measured in this run at the largest service count.\n\n| target | services | measured | goal | met |\n|---|---:|---:|---:|---|"
        );
        for t in &r.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} {} | {} |",
                t.what,
                t.services,
                t.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                if t.at_least { ">=" } else { "<=" },
                t.goal,
                if t.met { "yes" } else { "no" }
            );
        }
        out.push('\n');
    }
    if !r.programming.is_empty() {
        let _ = writeln!(
            out,
            "## Programming\n\nService (and Endpoints) created -> first successful connection from \
             node1's host to its ClusterIP.\n\n| services | mode | samples | p50 ms | p99 ms | max ms |\n|---:|---|---:|---:|---:|---:|"
        );
        for p in &r.programming {
            let s = &p.summary;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                p.services,
                p.mode,
                s.ok,
                s.p50_us as f64 / 1e3,
                s.p99_us as f64 / 1e3,
                s.max_us as f64 / 1e3
            );
        }
        out.push('\n');
    }
    if !r.endpoint_changes.is_empty() {
        let _ = writeln!(
            out,
            "## Endpoint change\n\nA Service's only endpoint replaced by the other backend -> \
             applied: from the outside (update request -> a new connection from node1's host \
             reaches the new backend) and as node1's proxy measures it \
             (`kubeproxy_network_programming_duration_seconds`, from the change's trigger time).\n\n\
             | services | mode | samples | outside p50 ms | outside p99 ms | proxy mean ms (observations) |\n|---:|---|---:|---:|---:|---|"
        );
        for e in &r.endpoint_changes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {} |",
                e.services,
                e.mode,
                e.outside.ok,
                e.outside.p50_us as f64 / 1e3,
                e.outside.p99_us as f64 / 1e3,
                e.proxy_mean_ms
                    .map_or("-".into(), |m| format!("{m:.1} ({})", e.proxy_observations))
            );
        }
        out.push('\n');
    }
    if !r.resyncs.is_empty() {
        let _ = writeln!(
            out,
            "## Full resync\n\nBoth agents restarted into the mode with every service present -> \
             node1's NodePort answers the external client (outside); node1's proxy's own full \
             syncs since that start (`kubeproxy_sync_full_proxy_rules_duration_seconds`).\n\n\
             | services | mode | restart -> serving s | proxy full sync mean ms (syncs) |\n|---:|---|---:|---|"
        );
        for x in &r.resyncs {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} |",
                x.services,
                x.mode,
                x.restart_to_serving_s,
                x.proxy_full_sync_mean_ms
                    .map_or("-".into(), |m| format!("{m:.1} ({})", x.proxy_full_syncs))
            );
        }
        out.push('\n');
    }
    if !r.per_packet.is_empty() {
        let _ = writeln!(
            out,
            "## Per packet (eBPF)\n\n`BPF_PROG_TEST_RUN`, kernel ns per run, median (mean); a \
             private copy of the programs with the frontends in its maps.\n\n\
             | frontends | bare XDP_PASS | XDP uplink: ClusterIP from outside | vs XDP_PASS | XDP uplink: to the node, no service | XDP uplink: transit | vs XDP_PASS | tc pod ingress: ClusterIP | maps written s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let ns = |n: &xkube_proxy::ebpf::perpacket::Ns| format!("{:.0} ({:.0})", n.median, n.mean);
        for p in &r.per_packet {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                p.frontends,
                ns(&p.bare_xdp_pass),
                ns(&p.xdp_service),
                ratio(p.xdp_service.median, Some(p.bare_xdp_pass.median)),
                ns(&p.xdp_to_node),
                ns(&p.xdp_transit),
                ratio(p.xdp_transit.median, Some(p.bare_xdp_pass.median)),
                ns(&p.tc_pod_ingress),
                p.maps_written_s
            );
        }
    }
    out
}

/// Writes `results.json`, `report.md` and the plots into `dir`.
pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    crate::plot::all(dir, r)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Results {
        let s = |rate: f64, p99: u64| Summary {
            ok: 100,
            errors: 0,
            seconds: 1.0,
            rate,
            p50_us: p99 / 2,
            p90_us: p99 - 1,
            p99_us: p99,
            p999_us: p99 + 1,
            max_us: p99 + 2,
            mean_us: p99 as f64 / 2.0,
        };
        let mut r = Results {
            modes: vec!["none".into(), "ebpf".into(), "iptables".into()],
            services: vec![1, 1000],
            ..Default::default()
        };
        for (mode, rate) in [("none", 1000.0), ("ebpf", 990.0), ("iptables", 500.0)] {
            for n in [1, 1000] {
                for (workload, p99) in [(Workload::Crr, 800), (Workload::Rr1, 400)] {
                    r.cells.push(Cell {
                        mode: mode.into(),
                        services: n,
                        route: Route::PodToRemote,
                        workload,
                        summary: s(rate, p99),
                    });
                }
            }
            if mode != "none" {
                r.costs.push(Cost {
                    mode: mode.into(),
                    services: 1,
                    requests: 1000,
                    cpu_seconds: 1.0,
                    cpu_per_1000: 1.0,
                    requests_per_cpu_second: rate,
                    agent_rss_kib: vec![40960, 40960],
                });
                r.programming.push(Programming {
                    mode: mode.into(),
                    services: 1000,
                    summary: s(1.0, 20_000),
                });
            }
        }
        r
    }

    #[test]
    fn the_report_shows_each_cell_with_ratios_to_none_and_iptables() {
        let md = markdown(&sample());
        assert!(
            md.contains("| node1 pod -> ClusterIP, backend on node2 | 1000 | ebpf | 990 | 400 | 800 | 801 | 0 | 0.99 | 1.98 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1 | iptables | 1000 | 1.000 | 500 | 1.00 | 40.0, 40.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 | ebpf | 100 | 10.0 | 20.0 | 20.0 |"),
            "{md}"
        );
        // none against itself, and a missing baseline.
        assert!(
            md.contains("| 1 | none | 1000 | 400 | 800 | 801 | 0 | 1.00 | 2.00 |"),
            "{md}"
        );
        assert_eq!(ratio(1.0, None), "-");
    }

    #[test]
    fn targets_are_ratios_at_the_largest_service_count() {
        let mut r = sample();
        // iptables' cost row is at 1 service only: that target has no ratio at 1000.
        let t = targets(&r);
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|t| t.services == 1000));
        // New connections: 990 / 1000.
        assert_eq!(t[0].ratio, Some(0.99));
        assert!(t[0].met && t[0].at_least);
        // Keep-alive p99: 400 / 400.
        assert_eq!(t[1].ratio, Some(1.0));
        assert!(t[1].met && !t[1].at_least);
        assert_eq!((t[2].ratio, t[2].met), (None, false));
        // Programming p99: 20 ms against 20 ms is not a tenth.
        assert_eq!((t[3].ratio, t[3].met), (Some(1.0), false));
        r.programming[0].summary.p99_us = 1_000;
        assert!(targets(&r)[3].met);
        r.targets = targets(&r);
        let md = markdown(&r);
        assert!(
            md.contains("| eBPF new connections/s (node1 pod -> ClusterIP, backend on node2) / none | 1000 | 0.99 | >= 0.95 | yes |"),
            "{md}"
        );
        assert!(md.contains("| - | >= 2 | no |"), "{md}");
    }
}
