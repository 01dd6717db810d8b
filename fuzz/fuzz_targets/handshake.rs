//! `websocket::classify` against a reference classifier written from the SPEC and
//! RFC 6455 §4.2.1; for a valid handshake, `check_switch` on a fuzzed `101`: accepted
//! exactly when `Upgrade` lists `websocket` and the one `Sec-WebSocket-Accept` is
//! `accept_for(key)`. See `invariants::check_classify` and `invariants::check_switch`.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use sluice::proxy::websocket::accept_for;
use sluice_fuzz::invariants::{
    check_classify, check_origin, check_switch, header_map, METHODS, SAMPLE_ACCEPT, SAMPLE_KEY,
    VALUES, VERSIONS,
};
use sluice_fuzz::{pairs, Name, Value};

#[derive(Debug, Arbitrary)]
enum MethodSel {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum KeySel {
    Sample,
    /// Base64 of these 16 bytes.
    Bytes([u8; 16]),
    Value(Value),
}

#[derive(Debug, Arbitrary)]
enum AcceptSel {
    Right,
    Padded,
    Lowercase,
    /// The accept for the RFC's sample key.
    Sample,
    Value(Value),
}

#[derive(Debug, Arbitrary)]
struct Input {
    method: MethodSel,
    version: u8,
    /// Start from a valid handshake with this key.
    base: Option<KeySel>,
    remove: Vec<Name>,
    headers: Vec<(Name, Value)>,
    /// Start the `101` from `Upgrade: websocket` and the right accept.
    base_response: bool,
    /// `allowed_origins`: none, or these entries of `VALUES`.
    allowed_origins: Option<Vec<u8>>,
    remove_response: Vec<Name>,
    response: Vec<(Name, AcceptSel)>,
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn remove(headers: &mut HeaderMap, names: &[Name]) {
    for name in names {
        if let Ok(name) = HeaderName::from_bytes(&name.bytes()) {
            headers.remove(name);
        }
    }
}

fuzz_target!(|input: Input| {
    let method = match &input.method {
        MethodSel::Known(i) => {
            Method::from_bytes(METHODS[usize::from(*i) % METHODS.len()].as_bytes())
        }
        MethodSel::Raw(raw) => Method::from_bytes(raw),
    };
    let Ok(method) = method else {
        return;
    };
    let version = VERSIONS[usize::from(input.version) % VERSIONS.len()];
    let mut base: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if let Some(key) = &input.base {
        let key = match key {
            KeySel::Sample => SAMPLE_KEY.as_bytes().to_vec(),
            KeySel::Bytes(bytes) => base64(bytes).into_bytes(),
            KeySel::Value(value) => value.bytes(),
        };
        base.push((b"upgrade".to_vec(), b"websocket".to_vec()));
        base.push((b"connection".to_vec(), b"Upgrade".to_vec()));
        base.push((b"sec-websocket-version".to_vec(), b"13".to_vec()));
        base.push((b"sec-websocket-key".to_vec(), key));
    }
    let mut headers = header_map(&base);
    remove(&mut headers, &input.remove);
    for (name, value) in pairs(&input.headers) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    let allowed: Option<Vec<String>> = input.allowed_origins.as_ref().map(|list| {
        list.iter()
            .map(|i| VALUES[usize::from(*i) % VALUES.len()].to_string())
            .collect()
    });
    if let Err(broke) = check_origin(allowed.as_deref(), &headers) {
        panic!("origin invariant broken: {broke}");
    }
    let key = match check_classify(&method, version, &headers) {
        Ok(Some(key)) => key,
        Ok(None) => return,
        Err(broke) => panic!("handshake invariant broken: {broke}"),
    };
    let accept = accept_for(&key);
    let mut response = HeaderMap::new();
    if input.base_response {
        response.append("upgrade", HeaderValue::from_static("websocket"));
        response.append("connection", HeaderValue::from_static("upgrade"));
        if let Ok(value) = HeaderValue::from_str(&accept) {
            response.append("sec-websocket-accept", value);
        }
    }
    remove(&mut response, &input.remove_response);
    for (name, value) in &input.response {
        let value = match value {
            AcceptSel::Right => accept.as_bytes().to_vec(),
            AcceptSel::Padded => format!(" {accept}\t").into_bytes(),
            AcceptSel::Lowercase => accept.to_ascii_lowercase().into_bytes(),
            AcceptSel::Sample => SAMPLE_ACCEPT.as_bytes().to_vec(),
            AcceptSel::Value(value) => value.bytes(),
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name.bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.append(name, value);
        }
    }
    if let Err(broke) = check_switch(&response, &key) {
        panic!("101 invariant broken: {broke}");
    }
});
