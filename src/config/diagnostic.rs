//! Turning problems into the lines `sluice check` prints:
//! `FILE:LINE:COL: key.path: what is wrong (what is allowed)`.
//!
//! Validators only say "what is wrong (what is allowed)" and hand over a span and a key
//! path; this module is the one place that adds the file, line and column, so every
//! message has the same shape (ripgrep's "the parser adds the flag name" convention).

use std::fmt;
use std::path::{Path, PathBuf};

use super::raw::Span;

/// One problem in a config file, already located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value (or key, or table header).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// `listener[0].addr`, `upstream.backend.servers[1].weight`; empty for a TOML syntax
    /// error, which belongs to no key.
    pub key_path: String,
    /// What is wrong, then what is allowed in parentheses.
    pub message: String,
}

/// Why a config file was not accepted.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read at all.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read, and these problems were found, in file order (never empty).
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (none for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// One line per problem, without a trailing newline. `FILE` is the path exactly as given.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(
                    f,
                    "{}: cannot read the config file: {source}",
                    path.display()
                )
            }
            ConfigError::Invalid { path, problems } => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{}:{}:{}: ", path.display(), p.line, p.column)?;
                    if !p.key_path.is_empty() {
                        write!(f, "{}: ", p.key_path)?;
                    }
                    // One line per problem, whatever a message quotes from the file.
                    if p.message.contains(['\n', '\r']) {
                        f.write_str(&p.message.replace('\n', "\\n").replace('\r', "\\r"))?;
                    } else {
                        f.write_str(&p.message)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// Problems collected during validation, still as byte spans.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    found: Vec<(Span, String, String)>,
}

impl Problems {
    pub(crate) fn push(&mut self, span: Span, key_path: String, message: String) {
        self.found.push((span, key_path, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// How many so far: a section compares before and after to know whether a key's form
    /// was fine (and only then refuses it as "not supported yet").
    pub(crate) fn len(&self) -> usize {
        self.found.len()
    }

    /// Locates every problem in `text` and sorts them into file order. The sort is stable,
    /// so two problems at one place keep the order they were found in.
    pub(crate) fn into_error(self, text: &str, path: &Path) -> ConfigError {
        let mut found = self.found;
        found.sort_by_key(|(span, _, _)| span.start);
        let problems = found
            .into_iter()
            .map(|(span, key_path, message)| {
                let (line, column) = line_col(text, span.start);
                Problem {
                    line,
                    column,
                    key_path,
                    message,
                }
            })
            .collect();
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the
/// end, or inside a character, is clamped rather than trusted.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "ab\ncd\n\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 2), (1, 3)); // the newline itself
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (3, 1));
        assert_eq!(line_col(text, 9), (4, 3));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let text = "k = \"é\" x";
        let x = text.find('x').unwrap();
        assert_eq!(line_col(text, x), (1, 9));
    }

    #[test]
    fn offsets_past_the_end_or_mid_character_are_clamped() {
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_col("é", 1), (1, 1));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn crlf_files_count_lines_the_same() {
        let text = "a = 1\r\nb = 2";
        assert_eq!(line_col(text, text.find('b').unwrap()), (2, 1));
    }

    #[test]
    fn renders_in_file_order_with_the_path_as_given() {
        let mut p = Problems::default();
        p.push(6..7, "b".into(), "second (x)".into());
        p.push(0..1, "a".into(), "first (y)".into());
        p.push(2..3, String::new(), "no key".into());
        let err = p.into_error("a = 1\nb = 2\n", Path::new("dir/s.toml"));
        assert_eq!(
            err.to_string(),
            "dir/s.toml:1:1: a: first (y)\ndir/s.toml:1:3: no key\ndir/s.toml:2:1: b: second (x)"
        );
    }
}
