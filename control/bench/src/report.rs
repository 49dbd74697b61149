//! `results.json` (every cell's summary and the machine facts), `report.md` (tables, ratios to
//! `none` and to `iptables`) and the SVG plots. Pure apart from writing the files.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use crate::{load::Workload, stats::Summary};

/// Where the traffic goes from and to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
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

/// Facts about the machine and the build measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub iptables_backend: String,
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
        "# xkube bench\n\n{} build (`{}`), kernel {}, {} ({} cores), iptables backend {}{}.\n\
         Absolute figures are machine-specific; compare within a table (one run).\n",
        m.build,
        m.binary,
        m.kernel,
        m.cpu_model,
        m.cores,
        m.iptables_backend,
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
                r.cells.push(Cell {
                    mode: mode.into(),
                    services: n,
                    route: Route::HostToRemote,
                    workload: Workload::Crr,
                    summary: s(rate, 800),
                });
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
            md.contains("| node1 host -> ClusterIP, backend on node2 | 1000 | ebpf | 990 | 400 | 800 | 801 | 0 | 0.99 | 1.98 |"),
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
}
