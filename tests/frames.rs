//! Frame tracking agrees with tungstenite's parser: arbitrary sequences of frames (text,
//! binary, fragmented messages with control frames between fragments, 16- and 64-bit
//! lengths, a Close with or without a code), masked as a client sends them, split at
//! arbitrary points, give the same number of data messages and the same Close code.

use std::io::Cursor;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use sluice::frames::{Frames, Sender};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
use tokio_tungstenite::tungstenite::Message;

/// A fixed seed, so CI checks the same cases every run; `PROPTEST_RNG_SEED=N` picks another.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0xf7a_3e5)
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed,
        ..default
    }
}

/// One frame on the wire: FIN, opcode and payload, masked with `key`.
fn frame(fin: bool, opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A data message, as one frame or in fragments, with control frames between them.
#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    /// Fragment lengths; each fragment may be followed by a ping.
    fragments: Vec<(usize, bool)>,
}

fn msg() -> impl Strategy<Value = Msg> {
    let len = prop_oneof![
        6 => 0usize..130,
        2 => 126usize..70_000,
        1 => 65_536usize..140_000,
    ];
    (
        any::<bool>(),
        prop::collection::vec((len, any::<bool>()), 1..4),
    )
        .prop_map(|(text, fragments)| Msg { text, fragments })
}

fn stream() -> impl Strategy<Value = (Vec<Msg>, Option<Option<u16>>, [u8; 4])> {
    (
        prop::collection::vec(msg(), 0..6),
        prop_oneof![
            Just(None),
            Just(Some(None)),
            // Codes a peer may send (RFC 6455 §7.4); tungstenite reads others as 1002.
            prop::sample::select(vec![
                1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011
            ])
            .prop_map(|c| Some(Some(c))),
            (3000u16..5000).prop_map(|c| Some(Some(c))),
        ],
        any::<[u8; 4]>(),
    )
}

fn encode(msgs: &[Msg], close: Option<Option<u16>>, key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let last = m.fragments.len() - 1;
        for (i, &(len, ping)) in m.fragments.iter().enumerate() {
            let opcode = match (i, m.text) {
                (0, true) => 1,
                (0, false) => 2,
                _ => 0,
            };
            // ASCII, so a text message is valid UTF-8 whatever the split.
            out.extend(frame(i == last, opcode, &vec![b'a'; len], key));
            if ping {
                out.extend(frame(true, 9, b"ping", key));
            }
        }
    }
    match close {
        Some(Some(code)) => out.extend(frame(true, 8, &code.to_be_bytes(), key)),
        Some(None) => out.extend(frame(true, 8, b"", key)),
        None => {}
    }
    out
}

/// Bytes to read, and a sink for what tungstenite writes back (its Pongs).
struct ReadOnly(Cursor<Vec<u8>>);

impl std::io::Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for ReadOnly {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What tungstenite reads from the stream as a server: data messages, and the Close code.
fn tungstenite_reads(bytes: Vec<u8>) -> (u64, Option<Option<u16>>) {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..Default::default()
    };
    let mut ws =
        WebSocket::from_raw_socket(ReadOnly(Cursor::new(bytes)), Role::Server, Some(config));
    let mut messages = 0;
    loop {
        match ws.read() {
            Ok(Message::Text(_) | Message::Binary(_)) => messages += 1,
            Ok(Message::Close(frame)) => {
                return (messages, Some(frame.map(|f| u16::from(f.code))));
            }
            Ok(_) => {}
            Err(_) => return (messages, None),
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn frame_tracking_agrees_with_tungstenite(
        (msgs, close, key) in stream(),
        cuts in prop::collection::vec(1usize..5000, 1..40),
    ) {
        let bytes = encode(&msgs, close, key);
        let (want_messages, want_close) = tungstenite_reads(bytes.clone());
        let mut frames = Frames::new(Sender::Client);
        // With a limit no message reaches, `feed_limited` takes its own paths and passes
        // every byte on.
        let mut limited = Frames::new(Sender::Client).with_limit(Some(u64::MAX - 1));
        let mut rest = &bytes[..];
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = cuts.next().copied().unwrap_or(1).min(rest.len());
            frames.feed(&rest[..n]);
            prop_assert_eq!(limited.feed_limited(&rest[..n]), n);
            rest = &rest[n..];
        }
        for frames in [&frames, &limited] {
            prop_assert!(!frames.is_broken());
            prop_assert!(!frames.is_over());
            prop_assert_eq!(frames.messages(), want_messages);
            prop_assert_eq!(frames.close(), want_close);
            prop_assert!(frames.at_boundary());
        }
    }
}
