//! SVG plots with plotters: one line per mode against the number of services.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    load::Workload,
    report::{Results, Route},
};

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// One line chart: x = index of the service count (labelled with the count), y = value.
fn chart(
    file: &Path,
    title: &str,
    y_label: &str,
    services: &[usize],
    lines: &[(String, Vec<Option<f64>>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(file, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ymax = lines
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1e-9)
        * 1.15;
    let n = services.len().max(1);
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.3f64..(n as f64 - 0.7), 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let labels: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    c.configure_mesh()
        .x_desc("services")
        .y_desc(y_label)
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, values)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter_map(|(x, v)| v.map(|v| (x as f64, v)))
            .collect();
        c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        c.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn per_mode(
    r: &Results,
    f: impl Fn(&str, usize) -> Option<f64>,
) -> Vec<(String, Vec<Option<f64>>)> {
    r.modes
        .iter()
        .map(|m| (m.clone(), r.services.iter().map(|n| f(m, *n)).collect()))
        .collect()
}

/// Every plot of the report; returns the files written.
pub fn all(dir: &Path, r: &Results) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut plot = |name: &str,
                    title: &str,
                    y: &str,
                    lines: Vec<(String, Vec<Option<f64>>)>|
     -> anyhow::Result<()> {
        let f = dir.join(name);
        chart(&f, title, y, &r.services, &lines)?;
        files.push(f);
        Ok(())
    };
    plot(
        "latency_p50_rr.svg",
        "Keep-alive request/response p50, node1 pod -> ClusterIP (backend on node2)",
        "p50 latency (µs)",
        per_mode(r, |m, n| {
            r.cell(m, n, Route::PodToRemote, Workload::Rr1)
                .map(|s| s.p50_us as f64)
        }),
    )?;
    plot(
        "latency_p99_rr.svg",
        "Keep-alive request/response p99, node1 pod -> ClusterIP (backend on node2)",
        "p99 latency (µs)",
        per_mode(r, |m, n| {
            r.cell(m, n, Route::PodToRemote, Workload::Rr1)
                .map(|s| s.p99_us as f64)
        }),
    )?;
    plot(
        "new_connections.svg",
        "New connections/s, node1 pod -> ClusterIP (backend on node2)",
        "connections/s",
        per_mode(r, |m, n| {
            r.cell(m, n, Route::PodToRemote, Workload::Crr)
                .map(|s| s.rate)
        }),
    )?;
    plot(
        "cpu_per_1000.svg",
        "Node CPU seconds per 1,000 requests (NodePort, backend on node2)",
        "CPU s / 1,000 requests",
        per_mode(r, |m, n| {
            r.costs
                .iter()
                .find(|c| c.mode == m && c.services == n)
                .map(|c| c.cpu_per_1000)
        }),
    )?;
    plot(
        "programming_p99.svg",
        "Service created -> first connection, p99",
        "milliseconds",
        per_mode(r, |m, n| {
            r.programming
                .iter()
                .find(|p| p.mode == m && p.services == n)
                .map(|p| p.summary.p99_us as f64 / 1e3)
        }),
    )?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plot_is_an_svg_document_with_a_line_per_mode() {
        let dir = std::env::temp_dir().join(format!("xkube-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let files = all(&dir, &crate::report::tests::sample()).expect("plots");
        assert_eq!(files.len(), 5);
        for f in &files {
            let svg = std::fs::read_to_string(f).expect("read");
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{}",
                f.display()
            );
            for mode in ["none", "ebpf", "iptables"] {
                assert!(
                    svg.contains(mode),
                    "{}: no legend entry {mode}",
                    f.display()
                );
            }
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
