//! `path::normalize` on any UTF-8 text, against a literal RFC 3986 §5.2.4
//! `remove_dot_segments` (with `%2e` read as a dot in dot-segments, and a `..` hidden
//! behind `%2f`/`%5c`/`\` refused): same answer, absolute, no dot-segment left,
//! idempotent, and a route prefix that matches the normal path is a real segment prefix
//! of it. See `invariants::check_path`. Seeds and `dicts/path.dict` supply the pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::invariants::check_path;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(broke) = check_path(path) {
        panic!("path invariant broken: {broke}");
    }
});
