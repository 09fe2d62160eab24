//! A shared counter. Each run adds to `/count` in the document `counter` with
//! read-modify-write transactions (read the value, write value + 1); run
//! several at once and every increment still lands exactly once, because a
//! transaction that read a stale count is rejected and re-run.
//!
//! ```text
//! cargo run -p concord-client --example counter -- [URL] [INCREMENTS]
//! ```
//! `URL` defaults to `ws://127.0.0.1:7700/ws` (a local `concord serve`),
//! `INCREMENTS` to 10.

// An example talks to its user on stdout.
#![allow(clippy::print_stdout)]

use concord_client::{Client, Pointer, TxResult};

const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";
const DEFAULT_INCREMENTS: u32 = 10;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    let increments = match args.next() {
        Some(raw) => raw.parse()?,
        None => DEFAULT_INCREMENTS,
    };

    let client = Client::connect(&url).await?;
    let doc = client.open("counter").await?;
    let count = Pointer::parse("/count")?;
    for _ in 0..increments {
        let count = count.clone();
        doc.transact(move |tx| -> TxResult<i64> {
            let next = tx.get_i64(&count).unwrap_or(0) + 1;
            tx.set(&count, next.into())?;
            Ok(next)
        })
        // The transaction function may run several times; the printing runs
        // once, after the commit.
        .after_commit(|count, receipt| {
            println!("count = {count} (at {}, {} run(s))", receipt.version, receipt.runs);
        })
        .await?;
    }
    let stats = client.stats();
    println!("{} commits, {} rejections re-run", stats.committed, stats.rejections);
    client.close().await;
    Ok(())
}
