//! The binary's allocator: mimalloc, tuned to give memory back to the OS once it is free.

/// mimalloc rather than the system allocator: see the benchmark notes in `benches/README.md`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc give memory back to the OS as soon as it is free. By default it does so
/// lazily, at its next call after a delay, and lets the thread that allocated a page adopt
/// it again on a free, after which blocks other threads free into it wait for that thread
/// to allocate: a runtime that goes idle after a burst of tunnels never gives the memory
/// back. An option already set in the environment (`MIMALLOC_PURGE_DELAY`, ...) is left
/// alone. Measurements: `benches/README.md`, "What was tried".
pub fn tune() {
    // Option numbers of mimalloc 3 (`mi_option_t` in mimalloc.h); 2.x numbers them otherwise.
    const OPTIONS: [(&str, i32, std::ffi::c_long); 3] = [
        // Purge (MADV_DONTNEED) freed pages at once rather than after 1 s.
        ("MIMALLOC_PURGE_DELAY", 15, 0),
        // Never reclaim an abandoned page into a thread's heap on a free.
        ("MIMALLOC_PAGE_RECLAIM_ON_FREE", 35, -1),
        // Abandon full pages at once rather than keeping two per size class.
        ("MIMALLOC_PAGE_FULL_RETAIN", 36, 0),
    ];
    // SAFETY: `mi_version` and `mi_option_set` only read and write mimalloc's option table;
    // `mi_option_set` is not thread-safe, and this runs first in `main`, before any other
    // thread exists.
    unsafe {
        if libmimalloc_sys::mi_version() / 10000 != 3 {
            return;
        }
        for (env, option, value) in OPTIONS {
            if std::env::var_os(env).is_none() {
                libmimalloc_sys::mi_option_set(option, value);
            }
        }
    }
}
