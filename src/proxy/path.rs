//! Request paths as routes see them: dot-segments removed (RFC 3986 §5.2.4), so that
//! `/app/../secret` can neither slip past a route's prefix nor reach a backend that would
//! resolve it itself. A dot-segment may be written with `%2e` for either dot. Pure; no I/O.

use std::borrow::Cow;

/// The path climbs above `/` (`/..`, `/a/../..`), or hides a `..` behind a separator that
/// some backends read as `/` (`..%2f`, `..\\`, `..%5c`): a malformed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Climbs;

/// `path` without dot-segments; borrowed (no allocation) when it has none.
///
/// # Errors
/// A `..` would climb above the root.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Climbs> {
    // Without a `.`, a `%` or a `\\` there is no dot-segment, plain or hidden.
    if memchr::memchr3(b'.', b'%', b'\\', path.as_bytes()).is_none() {
        return Ok(Cow::Borrowed(path));
    }
    if path.split('/').any(hides_dot_dot) {
        return Err(Climbs);
    }
    if !path.starts_with('/') || !path.split('/').any(|s| dots(s).is_some()) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    // The output ends with `/` when the last input segment was a dot-segment (`/a/b/..`
    // is `/a/`), as the RFC's algorithm leaves it.
    let mut trailing = false;
    for segment in path[1..].split('/') {
        trailing = false;
        match dots(segment) {
            Some(1) => trailing = true,
            Some(_) => {
                out.pop().ok_or(Climbs)?;
                trailing = true;
            }
            None => out.push(segment),
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing || out.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Whether a segment holds a `..` that a backend would act on though RFC 3986 does not:
/// between separators it decodes (`%2f`) or reads as `/` (`\\` on Windows servers), as in
/// `..%2fsecret` or `a\\..`, or before path parameters, which Java servers strip (`..;x`).
fn hides_dot_dot(segment: &str) -> bool {
    if let Some((before, _)) = segment.split_once(';') {
        if dots(before) == Some(2) {
            return true;
        }
    }
    if !segment.contains(['%', '\\']) {
        return false;
    }
    let split = segment
        .to_ascii_lowercase()
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    split.contains('/') && split.split('/').any(|part| dots(part) == Some(2))
}

/// `Some(1)` for `.`, `Some(2)` for `..` (each dot also as `%2e` or `%2E`), else `None`.
fn dots(segment: &str) -> Option<u8> {
    let mut rest = segment.as_bytes();
    let mut count = 0u8;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return None;
        }
        count += 1;
        if count > 2 {
            return None;
        }
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, Climbs> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn rfc_3986_examples_and_encoded_dots() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b/c", "/a/b/c"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/../b", "/b"),
            ("/app/../secret", "/secret"),
            ("/app/%2e%2e/secret", "/secret"),
            ("/app/%2E./secret", "/secret"),
            ("/app/.%2e/secret", "/secret"),
            ("/app/%2e/x", "/app/x"),
            ("/a//../b", "/a/b"),
            ("/./", "/"),
            ("/.", "/"),
            ("/a/..", "/"),
            ("/...", "/..."),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
            ("/a/%2f.../b", "/a/%2f.../b"),
            ("/files/a%2Fb", "/files/a%2Fb"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for input in [
            "/..",
            "/../a",
            "/a/../..",
            "/%2e%2e/etc/passwd",
            "/a/./../../b",
        ] {
            assert_eq!(norm(input), Err(Climbs), "{input}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/a/b.c/d"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("*"), Ok(Cow::Borrowed(_))));
    }
}
