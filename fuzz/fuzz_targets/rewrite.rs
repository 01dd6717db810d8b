//! `malformed::check`, then (when it passes) `headers::rewrite_request`: no hop-by-hop
//! header left, nothing the client named in `Connection` kept, no forged forwarding header
//! from an untrusted peer, end-to-end headers untouched. See `invariants::check_rewrite`.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;
use sluice::config::HostHeader;
use sluice_fuzz::invariants::{check_rewrite, header_map, RewriteCase, VERSIONS};
use sluice_fuzz::{pairs, Name, Value};

#[derive(Debug, Arbitrary)]
enum Target {
    Root,
    Origin(String),
    /// `http://AUTHORITY/path`.
    Absolute(Value),
}

#[derive(Debug, Arbitrary)]
enum HostSel {
    Preserve,
    Upstream,
    Fixed(Value),
}

#[derive(Debug, Arbitrary)]
struct Input {
    version: u8,
    target: Target,
    headers: Vec<(Name, Value)>,
    saw_content_length: bool,
    peer: IpAddr,
    trusted: bool,
    https: bool,
    host_header: HostSel,
    websocket: bool,
    keepalive: bool,
    set_headers: Vec<(Name, Value)>,
}

fuzz_target!(|input: Input| {
    let uri = match &input.target {
        Target::Root => None,
        Target::Origin(path) => Uri::try_from(path.as_str()).ok(),
        Target::Absolute(authority) => {
            let mut text = b"http://".to_vec();
            text.extend_from_slice(&authority.bytes());
            text.extend_from_slice(b"/p");
            Uri::try_from(text).ok()
        }
    }
    .unwrap_or_else(|| Uri::from_static("/"));
    let host_header = match &input.host_header {
        HostSel::Preserve => HostHeader::Preserve,
        HostSel::Upstream => HostHeader::Upstream,
        HostSel::Fixed(value) => match HeaderValue::from_bytes(&value.bytes()) {
            Ok(value) => HostHeader::Fixed(value),
            Err(_) => HostHeader::Preserve,
        },
    };
    let set_headers = pairs(&input.set_headers)
        .into_iter()
        .filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(&n).ok()?,
                HeaderValue::from_bytes(&v).ok()?,
            ))
        })
        .collect();
    let case = RewriteCase {
        version: VERSIONS[usize::from(input.version) % VERSIONS.len()],
        uri,
        headers: header_map(&pairs(&input.headers)),
        saw_content_length: input.saw_content_length,
        peer: input.peer,
        trusted: input.trusted,
        https: input.https,
        host_header,
        websocket: input.websocket,
        keepalive: input.keepalive,
        set_headers,
    };
    if let Err(broke) = check_rewrite(&case) {
        panic!("rewrite invariant broken: {broke}");
    }
});
