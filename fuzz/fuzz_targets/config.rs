//! `Config::from_toml` on any UTF-8 text: never panics; a refusal locates every problem
//! (1-based line and column inside the text, in file order) and renders each as one
//! `f.toml:LINE:COL: ` line; an acceptance keeps what validation promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::invariants::check_config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Validation reads the files a config names (TLS certificates, keys, CA bundles): only
    // regular files of at most 4 MiB, but the fuzzer should not read the machine's device
    // and kernel files at all.
    if ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    if let Err(broke) = check_config(text) {
        panic!("config invariant broken: {broke}");
    }
});
