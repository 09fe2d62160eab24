//! A whiteboard bot. It joins the document `whiteboard`, announces itself in
//! presence, draws its own circle under `/shapes/<bot id>` and moves it
//! around, and answers on the chat topic and over RPC. Writes to its own
//! shape never conflict with other clients' writes to theirs.
//!
//! Whoever sets `/paused` to `true` on the board stops every bot: each move
//! is a transaction that calls STM `retry()` while the board is paused, so
//! the bot sleeps until `/paused` changes instead of polling.
//!
//! ```text
//! cargo run -p concord-client --example whiteboard_bot -- [URL] [MOVES]
//! ```
//! `URL` defaults to `ws://127.0.0.1:7700/ws`, `MOVES` to 200. Talk to it by
//! publishing on `whiteboard.chat`, or call `bot.<id>.where`.

// An example talks to its user on stdout.
#![allow(clippy::print_stdout)]

use std::f64::consts::TAU;
use std::time::Duration;

use concord_client::{Client, Pointer, TxResult};
use serde_json::{json, Value};

const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";
const DEFAULT_MOVES: u32 = 200;
const CHAT_TOPIC: &str = "whiteboard.chat";
const STEP_INTERVAL: Duration = Duration::from_millis(50);
const STEPS_PER_TURN: u32 = 60;
const RADIUS: f64 = 100.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    let moves = match args.next() {
        Some(raw) => raw.parse()?,
        None => DEFAULT_MOVES,
    };

    let client = Client::connect(&url).await?;
    let name = format!("bot-{}", client.id());
    let board = client.open("whiteboard").await?;
    board.set_presence(json!({"name": name, "kind": "bot"})).await?;

    let shapes = Pointer::parse("/shapes")?;
    let shape = shapes.child(client.id());
    let (x, y) = (shape.child("x"), shape.child("y"));
    let paused = Pointer::parse("/paused")?;

    // Create the shapes map if this is the first client, then our circle.
    {
        let (shapes, shape) = (shapes.clone(), shape.clone());
        board
            .transact(move |tx| -> TxResult<()> {
                if tx.get(&shapes).is_none() {
                    tx.set(&shapes, json!({}))?;
                }
                tx.set(&shape, json!({"kind": "circle", "x": RADIUS, "y": 0.0, "r": 12}))?;
                Ok(())
            })
            .await?;
    }
    println!("{name} joined the board");

    // Anyone may ask where the bot is, over RPC or on the chat topic.
    {
        let (board, x, y) = (board.clone(), x.clone(), y.clone());
        client
            .register(&format!("bot.{}.where", client.id()), move |_| {
                let (board, x, y) = (board.clone(), x.clone(), y.clone());
                async move {
                    let position = async { Ok((board.get(&x).await?, board.get(&y).await?)) };
                    let position: Result<_, concord_client::Error> = position.await;
                    match position {
                        Ok((x, y)) => Ok(json!({"x": x, "y": y})),
                        Err(error) => Err(concord_client::RpcError::internal(error.to_string())),
                    }
                }
            })
            .await?;
    }
    let mut chat = client.subscribe(CHAT_TOPIC).await?;
    let chat_client = client.clone();
    let chat_name = name.clone();
    let chatter = tokio::spawn(async move {
        while let Some(message) = chat.next().await {
            if message.data.get("from").and_then(Value::as_str) == Some(chat_name.as_str()) {
                continue;
            }
            let reply = json!({"from": chat_name, "text": "beep boop, still circling"});
            // Fire and forget: chat is best-effort.
            let _ = chat_client.publish(CHAT_TOPIC, reply).without_echo().await;
        }
    });

    for step in 1..=moves {
        let angle = TAU * f64::from(step % STEPS_PER_TURN) / f64::from(STEPS_PER_TURN);
        let (x, y, paused) = (x.clone(), y.clone(), paused.clone());
        board
            .transact(move |tx| -> TxResult<()> {
                if tx.get(&paused) == Some(&Value::Bool(true)) {
                    // Sleep until someone touches /paused.
                    return tx.retry();
                }
                tx.set(&x, json!(RADIUS * angle.cos()))?;
                tx.set(&y, json!(RADIUS * angle.sin()))?;
                Ok(())
            })
            .await?;
        tokio::time::sleep(STEP_INTERVAL).await;
    }

    chatter.abort();
    board.transact(move |tx| -> TxResult<()> { Ok(tx.remove(&shape)?) }).await?;
    board.set_presence(Value::Null).await?;
    let stats = client.stats();
    println!("{name} made {} moves with {} rejections; leaving", stats.committed, stats.rejections);
    client.close().await;
    Ok(())
}
