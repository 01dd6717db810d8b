//! A small authoritative DNS server on loopback whose answers a test changes: A records
//! from a map, or SERVFAIL for everything while `failing` is set. Enough of RFC 1035 for a
//! resolver's A and AAAA queries over UDP.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// The server and its controls.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("DNS addr");
        let records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let server = DnsServer {
            addr,
            records: Arc::clone(&records),
            failing: Arc::clone(&failing),
            queries: Arc::clone(&queries),
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                let answer = {
                    let records = records.lock().unwrap();
                    respond(&buf[..n], &records, failing.load(Ordering::SeqCst))
                };
                if let Some(answer) = answer {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        server
    }

    /// Answers `name` (without the final dot) with `ips` from now on; none: NXDOMAIN.
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut records = self.records.lock().unwrap();
        if ips.is_empty() {
            records.remove(&name.to_ascii_lowercase());
        } else {
            records.insert(name.to_ascii_lowercase(), ips.to_vec());
        }
    }

    /// While set, every query gets SERVFAIL.
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The answer to one query, or `None` for a packet that is not one.
fn respond(
    query: &[u8],
    records: &HashMap<String, Vec<Ipv4Addr>>,
    failing: bool,
) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = query.get(12..i + 4)?;
    let name = labels.join(".");
    let found = records.get(&name);
    let rcode = if failing {
        2 // SERVFAIL
    } else if found.is_none() {
        3 // NXDOMAIN
    } else {
        0
    };
    let answers: &[Ipv4Addr] = match (found, qtype) {
        (Some(ips), 1) if !failing => ips,
        _ => &[],
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]); // id
    out.extend_from_slice(&[0x84 | (query[2] & 0x01), 0x80 | rcode]); // QR AA RD, RA rcode
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        out.extend_from_slice(&1u16.to_be_bytes()); // A
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&1u32.to_be_bytes()); // TTL 1 s
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
