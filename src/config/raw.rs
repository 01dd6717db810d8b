//! Stage 1: the TOML text as a tree in which every key, value and table header keeps its
//! byte span.
//!
//! Why not serde with `deny_unknown_fields` into typed structs? serde stops at the first
//! error, and the SPEC wants *every* problem reported at once. So the file is parsed with
//! `toml_edit` (whose `ImDocument` keeps spans on keys, values and table headers), copied
//! into the small owned tree below, and stage 2 (`validate`) walks it with [`Fields`],
//! which plays the part of `deny_unknown_fields` and type checking, but records each
//! problem and carries on.

use std::ops::Range;

use super::diagnostic::Problems;

/// A byte range into the config text.
pub(crate) type Span = Range<usize>;

/// A value and where it is written.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The value itself; for a `[table]` or `[[table]]`, its header.
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    String(String),
    Integer(i64),
    Float,
    Boolean(bool),
    Datetime,
    /// Both `[a, b]` and `[[x]]` (whose elements are tables).
    Array(Vec<Node>),
    Table(Table),
}

/// A table's entries, in the order `toml_edit` keeps them (file order within a table).
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub node: Node,
}

impl Table {
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

impl Value {
    /// The type as a message names it: "found an integer".
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(items)
                if !items.is_empty()
                    && items.iter().all(|n| matches!(n.value, Value::Table(_))) =>
            {
                "an array of tables"
            }
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// A TOML syntax error: the file is not TOML at all, so it is the only problem reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses `text` into the spanned tree.
///
/// # Errors
/// A syntax error (including duplicate keys and redefined tables), with its position.
pub(crate) fn parse(text: &str) -> Result<Table, SyntaxError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| SyntaxError {
        span: e.span().unwrap_or(0..0),
        // toml_edit's messages span several lines ("invalid key\nexpected `=`"); one
        // problem is one line.
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    Ok(convert_table(doc.as_table(), 0..0))
}

fn convert_table(table: &toml_edit::Table, fallback: Span) -> Table {
    let mut entries = Vec::new();
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let key_span = key.span().unwrap_or_else(|| fallback.clone());
        let node = match item {
            toml_edit::Item::None => continue,
            toml_edit::Item::Value(v) => convert_value(v, key_span.clone()),
            toml_edit::Item::Table(t) => Node {
                // A `[header]` table has the header's span; an implicit one (the
                // `upstream` of `[upstream.backend]`) or a dotted one has none: use its key.
                span: start_of(t.span(), &key_span),
                value: Value::Table(convert_table(t, key_span.clone())),
            },
            toml_edit::Item::ArrayOfTables(a) => Node {
                span: start_of(a.span(), &key_span),
                value: Value::Array(
                    a.iter()
                        .map(|t| {
                            let span = start_of(t.span(), &key_span);
                            Node {
                                value: Value::Table(convert_table(t, span.clone())),
                                span,
                            }
                        })
                        .collect(),
                ),
            },
        };
        entries.push(Entry {
            key: name.to_owned(),
            key_span,
            node,
        });
    }
    Table { entries }
}

fn convert_inline(table: &toml_edit::InlineTable, fallback: Span) -> Table {
    let mut entries = Vec::new();
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let key_span = key.span().unwrap_or_else(|| fallback.clone());
        let node = match item {
            toml_edit::Item::Value(v) => convert_value(v, key_span.clone()),
            // Inline tables only hold values; anything else cannot come from the parser.
            _ => continue,
        };
        entries.push(Entry {
            key: name.to_owned(),
            key_span,
            node,
        });
    }
    Table { entries }
}

fn convert_value(value: &toml_edit::Value, fallback: Span) -> Node {
    let span = value.span().unwrap_or_else(|| fallback.clone());
    let value = match value {
        toml_edit::Value::String(s) => Value::String(s.value().clone()),
        toml_edit::Value::Integer(i) => Value::Integer(*i.value()),
        toml_edit::Value::Float(_) => Value::Float,
        toml_edit::Value::Boolean(b) => Value::Boolean(*b.value()),
        toml_edit::Value::Datetime(_) => Value::Datetime,
        toml_edit::Value::Array(a) => {
            Value::Array(a.iter().map(|v| convert_value(v, span.clone())).collect())
        }
        toml_edit::Value::InlineTable(t) => Value::Table(convert_inline(t, span.clone())),
    };
    Node { span, value }
}

/// Problems point at where something starts: a header's span may run to its table's last
/// value, and only the start matters for `LINE:COL`.
fn start_of(span: Option<Span>, fallback: &Span) -> Span {
    match span {
        Some(s) => s.start..s.start,
        None => fallback.clone(),
    }
}

/// Appends `key` to a dotted key path, quoting it when it is not a bare TOML key
/// (`route[0].set_headers."X Bad"`).
pub(crate) fn join_key(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// One table being read by stage 2: the `deny_unknown_fields` of this design.
///
/// Creating it reports every key not in `allowed`; the accessors then fetch known keys,
/// reporting a wrong type and returning `None` so that validation carries on.
pub(crate) struct Fields<'a> {
    pub table: &'a Table,
    /// Key path of the table itself (`listener[0]`, `upstream.backend`).
    pub path: String,
    /// Where "missing key" problems point: the table's header.
    pub span: Span,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(
        node: &'a Node,
        table: &'a Table,
        path: String,
        allowed: &[&str],
        problems: &mut Problems,
    ) -> Fields<'a> {
        for entry in &table.entries {
            if !allowed.contains(&entry.key.as_str()) {
                problems.push(
                    entry.key_span.clone(),
                    join_key(&path, &entry.key),
                    format!("unknown key (allowed: {})", allowed.join(", ")),
                );
            }
        }
        Fields {
            table,
            path,
            span: node.span.clone(),
        }
    }

    /// The key path of one of this table's keys.
    pub(crate) fn key_path(&self, key: &str) -> String {
        join_key(&self.path, key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Node> {
        self.table.get(key).map(|e| &e.node)
    }

    /// A required key; reports it missing at the table's header.
    pub(crate) fn require(
        &self,
        key: &str,
        allowed: &str,
        problems: &mut Problems,
    ) -> Option<&'a Node> {
        let node = self.get(key);
        if node.is_none() {
            problems.push(
                self.span.clone(),
                self.key_path(key),
                format!("missing (required: {allowed})"),
            );
        }
        node
    }

    pub(crate) fn string(
        &self,
        key: &str,
        allowed: &str,
        problems: &mut Problems,
    ) -> Option<(&'a str, &'a Node)> {
        let node = self.get(key)?;
        as_str(node, &self.key_path(key), allowed, problems).map(|s| (s, node))
    }

    pub(crate) fn boolean(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        let node = self.get(key)?;
        match node.value {
            Value::Boolean(b) => Some(b),
            _ => {
                wrong_type(node, &self.key_path(key), "true or false", "", problems);
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub(crate) fn integer(
        &self,
        key: &str,
        min: i64,
        max: i64,
        problems: &mut Problems,
    ) -> Option<i64> {
        let node = self.get(key)?;
        as_integer(node, &self.key_path(key), min, max, problems)
    }
}

/// A string value, or a "wrong type" problem.
pub(crate) fn as_str<'n>(
    node: &'n Node,
    path: &str,
    allowed: &str,
    problems: &mut Problems,
) -> Option<&'n str> {
    match &node.value {
        Value::String(s) => Some(s),
        _ => {
            wrong_type(node, path, "a string", allowed, problems);
            None
        }
    }
}

/// An integer within `min..=max`, or a problem naming the range.
pub(crate) fn as_integer(
    node: &Node,
    path: &str,
    min: i64,
    max: i64,
    problems: &mut Problems,
) -> Option<i64> {
    let range = if max == i64::MAX {
        format!("{min} or more")
    } else {
        format!("{min} to {max}")
    };
    match node.value {
        Value::Integer(i) if (min..=max).contains(&i) => Some(i),
        Value::Integer(i) => {
            problems.push(
                node.span.clone(),
                path.to_owned(),
                format!("{i} is out of range ({range})"),
            );
            None
        }
        _ => {
            wrong_type(node, path, "an integer", &range, problems);
            None
        }
    }
}

/// Reports `expected a string, found an integer (HINT)`; an empty `hint` is left out.
pub(crate) fn wrong_type(
    node: &Node,
    path: &str,
    expected: &str,
    hint: &str,
    problems: &mut Problems,
) {
    let found = node.value.type_name();
    let message = if hint.is_empty() {
        format!("expected {expected}, found {found}")
    } else {
        format!("expected {expected}, found {found} ({hint})")
    };
    problems.push(node.span.clone(), path.to_owned(), message);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(text: &str, needle: &str) -> usize {
        text.find(needle).unwrap()
    }

    #[test]
    fn spans_point_at_keys_values_and_headers() {
        let text = "[[listener]]\naddr = \"0.0.0.0:8080\"\n\n[upstream.backend]\nservers = [\"a:1\", { addr = \"b:2\" }]\n";
        let root = parse(text).unwrap();
        let listener = &root.get("listener").unwrap().node;
        let Value::Array(items) = &listener.value else {
            panic!("not an array")
        };
        assert_eq!(items[0].span.start, 0);
        let Value::Table(t) = &items[0].value else {
            panic!("not a table")
        };
        let addr = t.get("addr").unwrap();
        assert_eq!(addr.key_span.start, offset(text, "addr"));
        assert_eq!(addr.node.span.start, offset(text, "\"0.0.0.0"));

        let upstream = root.get("upstream").unwrap();
        let Value::Table(u) = &upstream.node.value else {
            panic!("not a table")
        };
        let backend = u.get("backend").unwrap();
        assert_eq!(backend.node.span.start, offset(text, "[upstream.backend]"));
        let Value::Table(b) = &backend.node.value else {
            panic!("not a table")
        };
        let Value::Array(servers) = &b.get("servers").unwrap().node.value else {
            panic!("not an array")
        };
        assert_eq!(servers[0].span.start, offset(text, "\"a:1\""));
        assert_eq!(servers[1].span.start, offset(text, "{ addr"));
        let Value::Table(inline) = &servers[1].value else {
            panic!("not a table")
        };
        assert_eq!(
            inline.get("addr").unwrap().node.span.start,
            offset(text, "\"b:2\"")
        );
    }

    #[test]
    fn syntax_error_has_a_position_and_one_line() {
        let err = parse("a = 1\nb = = 2\n").unwrap_err();
        assert_eq!(err.span.start, 10);
        assert!(!err.message.contains('\n'));
    }

    #[test]
    fn type_names() {
        let root = parse("a = []\nb = [{x = 1}]\nc = 1979-05-27\n").unwrap();
        let names: Vec<_> = root
            .entries
            .iter()
            .map(|e| e.node.value.type_name())
            .collect();
        assert_eq!(names, ["an array", "an array of tables", "a date-time"]);
    }

    #[test]
    fn key_paths_quote_non_bare_keys() {
        assert_eq!(join_key("", "proxy"), "proxy");
        assert_eq!(join_key("route[0]", "set_headers"), "route[0].set_headers");
        assert_eq!(
            join_key("route[0].set_headers", "X Bad"),
            "route[0].set_headers.\"X Bad\""
        );
    }
}
