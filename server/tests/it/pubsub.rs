//! Publish/subscribe and presence (issue 3, test 7).

use serde_json::{json, Value};

use crate::support::{start_default, Client};

async fn subscribe(client: &mut Client, topic: &str) {
    client.send(json!({"type": "subscribe", "topic": topic})).await;
    assert_eq!(client.expect("subscribed").await["topic"], topic);
}

async fn publish(client: &mut Client, topic: &str, data: Value) {
    client.send(json!({"type": "publish", "topic": topic, "data": data})).await;
}

/// Publishes a sentinel on `fence.<name>` (which `client` subscribed to
/// beforehand) and reads `client` up to it, so "nothing else arrived before"
/// is a statement about order, not timing.
async fn messages_until_fence(
    client: &mut Client,
    publisher: &mut Client,
    name: &str,
) -> Vec<Value> {
    publish(publisher, &format!("fence.{name}"), json!("fence")).await;
    let mut seen = Vec::new();
    loop {
        let message = client.expect("message").await;
        if message["topic"] == format!("fence.{name}") {
            return seen;
        }
        seen.push(message);
    }
}

#[tokio::test]
async fn wildcards_match_one_segment_or_the_rest() {
    let server = start_default().await;
    let mut star = Client::connect(&server).await;
    let mut rest = Client::connect(&server).await;
    let mut exact = Client::connect(&server).await;
    let mut publisher = Client::connect(&server).await;
    subscribe(&mut star, "board.*.cursor").await;
    subscribe(&mut rest, "board.>").await;
    subscribe(&mut exact, "board.1.cursor").await;
    subscribe(&mut star, "fence.star").await;
    subscribe(&mut star, "fence.star2").await;
    subscribe(&mut rest, "fence.rest").await;
    subscribe(&mut exact, "fence.exact").await;

    for topic in
        ["board.1.cursor", "board.2.cursor", "board.2", "board", "board.2.cursor.x", "other.1"]
    {
        publish(&mut publisher, topic, json!({"t": topic})).await;
    }
    let topics = |messages: Vec<Value>| -> Vec<String> {
        messages.iter().map(|m| m["topic"].as_str().unwrap().to_owned()).collect()
    };
    let got = topics(messages_until_fence(&mut star, &mut publisher, "star").await);
    assert_eq!(got, ["board.1.cursor", "board.2.cursor"]);
    let got = topics(messages_until_fence(&mut rest, &mut publisher, "rest").await);
    assert_eq!(got, ["board.1.cursor", "board.2.cursor", "board.2", "board.2.cursor.x"]);
    let got = topics(messages_until_fence(&mut exact, &mut publisher, "exact").await);
    assert_eq!(got, ["board.1.cursor"]);

    // Unsubscribing stops delivery.
    star.send(json!({"type": "unsubscribe", "topic": "board.*.cursor"})).await;
    publish(&mut publisher, "board.3.cursor", json!(3)).await;
    assert!(messages_until_fence(&mut star, &mut publisher, "star2").await.is_empty());

    // Wildcards are for patterns only.
    publisher.send(json!({"type": "publish", "topic": "board.*", "data": 1})).await;
    publisher.expect_error("bad_id").await;
    publisher.send(json!({"type": "subscribe", "topic": "board.>.x"})).await;
    publisher.expect_error("bad_id").await;
    server.shutdown().await;
}

#[tokio::test]
async fn echo_false_skips_the_publisher_and_acks_are_sent_after_delivery() {
    let server = start_default().await;
    let mut publisher = Client::connect(&server).await;
    let mut other = Client::connect(&server).await;
    subscribe(&mut publisher, "chat.>").await;
    subscribe(&mut other, "chat.>").await;

    publisher
        .send(json!({"type": "publish", "topic": "chat.room", "data": "quiet", "echo": false, "ack": 1}))
        .await;
    assert_eq!(publisher.expect("published").await, json!({"type": "published", "ack": 1}));
    assert_eq!(
        other.expect("message").await,
        json!({"type": "message", "topic": "chat.room", "data": "quiet"})
    );

    publisher
        .send(json!({"type": "publish", "topic": "chat.room", "data": "loud", "ack": 2}))
        .await;
    assert_eq!(publisher.expect("message").await["data"], "loud");
    assert_eq!(publisher.expect("published").await["ack"], 2);
    assert_eq!(other.expect("message").await["data"], "loud");
    server.shutdown().await;
}

#[tokio::test]
async fn each_publishers_messages_arrive_in_order() {
    let server = start_default().await;
    let mut subscriber = Client::connect(&server).await;
    subscribe(&mut subscriber, "seq.*").await;
    let mut p1 = Client::connect(&server).await;
    let mut p2 = Client::connect(&server).await;
    let count = 200;
    let send_all = |mut publisher: Client, name: &'static str| async move {
        for i in 0..count {
            publisher
                .send(json!({"type": "publish", "topic": format!("seq.{name}"), "data": i}))
                .await;
        }
        publisher
    };
    let (p1_done, p2_done) = tokio::join!(send_all(p1, "one"), send_all(p2, "two"));
    p1 = p1_done;
    p2 = p2_done;
    let mut next = [0, 0];
    for _ in 0..2 * count {
        let message = subscriber.expect("message").await;
        let index = usize::from(message["topic"] == "seq.two");
        assert_eq!(message["data"], next[index], "{message}");
        next[index] += 1;
    }
    drop((p1, p2));
    server.shutdown().await;
}

#[tokio::test]
async fn presence_join_update_leave_and_leave_when_a_socket_dies() {
    let server = start_default().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.open("board", None).await;
    b.open("board", None).await;
    let a_id = a.session.clone();

    let expect_presence = |event: &'static str, state: Value| {
        let a_id = a_id.clone();
        move |message: Value| {
            assert_eq!(
                message,
                json!({"type": "presence", "doc": "board", "session": a_id, "event": event, "state": state})
            );
        }
    };

    a.send(json!({"type": "presence", "doc": "board", "state": {"cursor": [1, 2]}})).await;
    expect_presence("join", json!({"cursor": [1, 2]}))(b.expect("presence").await);
    a.send(json!({"type": "presence", "doc": "board", "state": {"cursor": [3, 4]}})).await;
    expect_presence("update", json!({"cursor": [3, 4]}))(b.expect("presence").await);

    // A newcomer gets the current presence of others right after `opened`.
    let mut c = Client::connect(&server).await;
    c.open("board", None).await;
    expect_presence("join", json!({"cursor": [3, 4]}))(c.expect("presence").await);

    // Clearing with null is a leave; setting again is a join.
    a.send(json!({"type": "presence", "doc": "board", "state": null})).await;
    expect_presence("leave", Value::Null)(b.expect("presence").await);
    expect_presence("leave", Value::Null)(c.expect("presence").await);
    a.send(json!({"type": "presence", "doc": "board", "state": {"name": "ann"}})).await;
    expect_presence("join", json!({"name": "ann"}))(b.expect("presence").await);
    expect_presence("join", json!({"name": "ann"}))(c.expect("presence").await);

    // Closing the document is a leave.
    a.send(json!({"type": "close", "doc": "board"})).await;
    expect_presence("leave", Value::Null)(b.expect("presence").await);
    expect_presence("leave", Value::Null)(c.expect("presence").await);

    // So is the socket dying, without any goodbye.
    a.open("board", None).await;
    a.send(json!({"type": "presence", "doc": "board", "state": {"name": "ann"}})).await;
    b.expect("presence").await;
    c.expect("presence").await;
    drop(a);
    expect_presence("leave", Value::Null)(b.expect("presence").await);
    expect_presence("leave", Value::Null)(c.expect("presence").await);
    server.shutdown().await;
}
