//! Publish/subscribe and presence between two clients.

use concord_client::{Message, PresenceEvent};
use serde_json::json;

use crate::support::{connect, start_server};

fn message(topic: &str, data: serde_json::Value) -> Message {
    Message { topic: topic.into(), data }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_reach_matching_subscriptions() {
    let server = start_server().await;
    let publisher = connect(&server.ws_url()).await;
    let subscriber = connect(&server.ws_url()).await;
    let mut cursors = subscriber.subscribe("board.*.cursor").await.unwrap();
    let mut board = subscriber.subscribe("board.>").await.unwrap();

    publisher.publish("board.7.cursor", json!({"x": 1})).confirmed().await.unwrap();
    publisher.publish("board.7.shape.added", json!("s1")).confirmed().await.unwrap();
    publisher.publish("chat.general", json!("not for them")).confirmed().await.unwrap();
    publisher.publish("board.8.cursor", json!({"x": 2})).confirmed().await.unwrap();

    // Each subscription gets what matches its pattern, in publish order.
    assert_eq!(cursors.next().await.unwrap(), message("board.7.cursor", json!({"x": 1})));
    assert_eq!(cursors.next().await.unwrap(), message("board.8.cursor", json!({"x": 2})));
    assert_eq!(board.next().await.unwrap(), message("board.7.cursor", json!({"x": 1})));
    assert_eq!(board.next().await.unwrap(), message("board.7.shape.added", json!("s1")));
    assert_eq!(board.next().await.unwrap(), message("board.8.cursor", json!({"x": 2})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_can_keep_its_own_messages_from_itself() {
    let server = start_server().await;
    let client = connect(&server.ws_url()).await;
    let mut own = client.subscribe("echo.test").await.unwrap();
    client.publish("echo.test", json!(1)).without_echo().confirmed().await.unwrap();
    client.publish("echo.test", json!(2)).confirmed().await.unwrap();
    assert_eq!(own.next().await.unwrap(), message("echo.test", json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_joins_updates_and_leaves() {
    let server = start_server().await;
    let ann = connect(&server.ws_url()).await;
    let bob = connect(&server.ws_url()).await;
    let bob_doc = bob.open("room").await.unwrap();
    let mut events = bob_doc.presence();
    let ann_doc = ann.open("room").await.unwrap();
    let ann_session = ann.session().await.unwrap().unwrap();

    ann_doc.set_presence(json!({"name": "ann"})).await.unwrap();
    let joined = events.next().await.unwrap();
    assert_eq!(
        (joined.session.as_str(), joined.event, joined.state),
        (ann_session.as_str(), PresenceEvent::Join, json!({"name": "ann"}))
    );

    ann_doc.set_presence(json!({"name": "ann", "cursor": [3, 4]})).await.unwrap();
    let updated = events.next().await.unwrap();
    assert_eq!(
        (updated.event, updated.state),
        (PresenceEvent::Update, json!({"name": "ann", "cursor": [3, 4]}))
    );

    ann.close().await;
    let left = events.next().await.unwrap();
    assert_eq!((left.session, left.event), (ann_session, PresenceEvent::Leave));
}
