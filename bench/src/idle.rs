//! W5, idle connections: N sessions connect (each waits for its `welcome`,
//! so the server's session is fully set up) and stay idle. The server's
//! resident memory (`VmRSS`) is read before the first connects and after the
//! last is welcomed; the difference over N is the memory per idle session.
//! One warm-up session is connected and closed first, so one-time
//! allocations (runtime, HTTP stack) are not charged to the sessions.

use anyhow::Result;
use indicatif::ProgressBar;
use tokio::task::JoinSet;

use crate::broadcast::CONNECTS_IN_FLIGHT_MAX;
use crate::report::Report;
use crate::server::{ProcessUsage, ServerProcess};
use crate::wire::Conn;

pub async fn run(
    server: &ServerProcess,
    sessions: usize,
    progress: &ProgressBar,
) -> Result<Report> {
    let url = server.ws_url().to_owned();
    Conn::connect(&url).await?.close().await;

    let generator_before = ProcessUsage::read_self()?;
    let server_before = server.usage()?;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT_MAX));
    let mut connecting = JoinSet::new();
    for _ in 0..sessions {
        let (url, permits, progress) = (url.clone(), permits.clone(), progress.clone());
        connecting.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let conn = Conn::connect(&url).await?;
            progress.inc(1);
            anyhow::Ok(conn)
        });
    }
    let mut open = Vec::with_capacity(sessions);
    while let Some(conn) = connecting.join_next().await {
        open.push(conn??);
    }
    let server_after = server.usage()?;
    let generator_after = ProcessUsage::read_self()?;

    let mut report = Report::new("w5", "concord");
    report.set("sessions", sessions as f64);
    report.set("rss_before_kib", server_before.rss_kib as f64);
    report.set("rss_after_kib", server_after.rss_kib as f64);
    let grown_bytes = server_after.rss_kib.saturating_sub(server_before.rss_kib) * 1024;
    report.set("rss_per_session_kib", grown_bytes as f64 / 1024.0 / sessions as f64);
    report.set_cpu((server_before, server_after), (generator_before, generator_after), 0);
    let server_cpu = report.get("server_cpu_s").unwrap_or(0.0);
    report.set("server_cpu_us_per_session", server_cpu * 1e6 / sessions as f64);
    // Closing 10,000 sessions one by one takes a while; dropping them with
    // the server is enough.
    drop(open);
    Ok(report)
}
