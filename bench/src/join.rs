//! W3, the late joiner: a board of N shapes is built first (in commits of
//! `SHAPES_PER_SETUP_COMMIT`), then new clients join one after another. Each
//! join is timed from the start of the TCP connect to the moment the
//! snapshot is decoded and `opened` arrived — what a user waits for — and
//! its bytes are the payloads of every frame received (welcome, snapshot,
//! opened). Every join must load all N shapes.

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::report::{Latencies, Report};
use crate::server::{ProcessUsage, ServerProcess};
use crate::wire::{run_tag, Conn};

const DOC: &str = "bench-big-board";
/// Shapes added per setup commit (under the server's 1,000 patch ops).
const SHAPES_PER_SETUP_COMMIT: usize = 500;

pub async fn run(
    server: &ServerProcess,
    shapes: usize,
    joins: usize,
    progress: &ProgressBar,
) -> Result<Report> {
    let url = server.ws_url().to_owned();
    let tag = run_tag();
    let mut setup = Conn::connect(&url).await?;
    setup.open(DOC).await?;
    setup
        .commit_and_wait(
            DOC,
            &format!("{tag}-root"),
            r#"[{"op":"add","path":"/shapes","value":{}}]"#,
        )
        .await?;
    for (batch, first) in (0..shapes).step_by(SHAPES_PER_SETUP_COMMIT).enumerate() {
        let writes: Vec<Value> = (first..shapes.min(first + SHAPES_PER_SETUP_COMMIT))
            .map(|shape| {
                json!({"op": "add", "path": format!("/shapes/s{shape}"), "value": {
                    "x": shape % 1920, "y": shape % 1080, "w": 40, "h": 30,
                    "color": "#3366ff", "label": format!("shape {shape}"),
                }})
            })
            .collect();
        setup
            .commit_and_wait(DOC, &format!("{tag}-b{batch}"), &Value::Array(writes).to_string())
            .await?;
    }
    setup.close().await;

    let generator_before = ProcessUsage::read_self()?;
    let server_before = server.usage()?;
    let mut latencies = Latencies::new()?;
    let mut bytes = Vec::with_capacity(joins);
    for _ in 0..joins {
        let began = Instant::now();
        let mut joiner = Conn::connect(&url).await?;
        let (snapshot, _) = joiner.open(DOC).await?;
        let snapshot = snapshot.context("the join got no snapshot")?;
        let message: Value = serde_json::from_str(snapshot.as_str())?;
        let loaded = message["value"]["shapes"].as_object().map_or(0, Map::len);
        let elapsed = began.elapsed();
        if loaded != shapes {
            bail!("the late joiner loaded {loaded} shapes, expected {shapes}");
        }
        latencies.record(elapsed);
        bytes.push(joiner.bytes_received as f64);
        joiner.close().await;
        progress.inc(1);
    }
    let server_after = server.usage()?;
    let generator_after = ProcessUsage::read_self()?;

    let mut report = Report::new("w3", "concord");
    report.set("shapes", shapes as f64);
    report.set("shapes_loaded", shapes as f64);
    report.set("joins", joins as f64);
    report.set_latencies("join", &latencies);
    report.set("join_bytes", crate::report::median(bytes));
    report.set_cpu((server_before, server_after), (generator_before, generator_after), 0);
    let server_cpu = report.get("server_cpu_s").unwrap_or(0.0);
    report.set("server_cpu_ms_per_join", server_cpu * 1000.0 / joins as f64);
    Ok(report)
}
