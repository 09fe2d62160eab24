//! Decoding client messages from arbitrary bytes never panics, and whatever
//! decodes can be sent back: it encodes, and the encoding decodes to the
//! same message.
//!
//! "The same" allows floating-point numbers to differ in the last bits:
//! without serde_json's `float_roundtrip` feature (which the engine does not
//! enable) parsing a float is not always correctly rounded, so the shortest
//! printed form of a parsed float may parse to a neighbouring value.

#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_engine::protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Equality of JSON values, with floats compared to a relative tolerance far
/// coarser than parsing error and far finer than any real difference.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = serde_json::from_slice::<ClientMessage>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&message).expect("a decoded message encodes");
    let decoded =
        serde_json::from_slice::<ClientMessage>(&encoded).expect("an encoded message decodes");
    let (first, second) = (
        serde_json::to_value(&message).expect("encodes as a value"),
        serde_json::to_value(&decoded).expect("encodes as a value"),
    );
    assert!(same(&first, &second), "{first} re-decoded as {second}");
});
