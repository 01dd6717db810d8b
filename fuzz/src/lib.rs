//! Shared pieces of the fuzz targets: the invariants (also used by `tests/properties.rs`)
//! and `arbitrary` generators that lean on dictionaries of the header names and values
//! sluice cares about, so the fuzzer reaches the interesting branches quickly.

pub mod invariants;

use arbitrary::Arbitrary;
use invariants::{NAMES, VALUES};

/// A header name: one sluice cares about, or any bytes.
#[derive(Debug, Arbitrary)]
pub enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

impl Name {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Name::Known(i) => NAMES[usize::from(*i) % NAMES.len()].as_bytes().to_vec(),
            Name::Raw(raw) => raw.clone(),
        }
    }
}

/// A header value: a known one, a list of known names (for `Connection`), or any bytes.
#[derive(Debug, Arbitrary)]
pub enum Value {
    Known(u8),
    Names(Vec<u8>),
    Raw(Vec<u8>),
}

impl Value {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Value::Known(i) => VALUES[usize::from(*i) % VALUES.len()].as_bytes().to_vec(),
            Value::Names(list) => list
                .iter()
                .map(|i| NAMES[usize::from(*i) % NAMES.len()])
                .collect::<Vec<_>>()
                .join(", ")
                .into_bytes(),
            Value::Raw(raw) => raw.clone(),
        }
    }
}

/// Raw (name, value) pairs, in order.
pub fn pairs(headers: &[(Name, Value)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.bytes(), v.bytes()))
        .collect()
}
