//! JSON Pointer parsing and printing agree with each other.
//!
//! Two directions are checked. From text: a string that parses prints back as
//! exactly the same string, because RFC 6901 gives every pointer a single
//! spelling (`~` and `/` inside a token can only be written `~0` and `~1`),
//! and the printed form parses to an equal pointer. From tokens: any tokens
//! print as a string that parses back to the same tokens, unless the string
//! is over the length limit, which must then be the reason it is refused.

#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use concord_engine::error::InvalidPointer;
use concord_engine::pointer::POINTER_LEN_MAX;
use concord_engine::Pointer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, Vec<String>)| {
    let (raw, tokens) = input;

    if let Ok(pointer) = Pointer::parse(raw) {
        assert!(raw.len() <= POINTER_LEN_MAX, "over-long pointer accepted");
        let printed = pointer.to_string();
        assert_eq!(printed, raw, "a parsed pointer prints as its input");
        let reparsed = Pointer::parse(&printed).expect("a printed pointer parses");
        assert_eq!(reparsed, pointer);
        assert_eq!(Pointer::from_tokens(pointer.tokens().iter().cloned()), pointer);
    }

    let built = Pointer::from_tokens(tokens.iter().cloned());
    let printed = built.to_string();
    match Pointer::parse(&printed) {
        Ok(reparsed) => {
            assert_eq!(reparsed.tokens(), tokens.as_slice());
            assert_eq!(reparsed, built);
        }
        Err(InvalidPointer::TooLong { len_bytes }) => {
            assert_eq!(len_bytes, printed.len());
            assert!(len_bytes > POINTER_LEN_MAX);
        }
        Err(error) => panic!("printed pointer {printed:?} does not parse: {error}"),
    }
});
