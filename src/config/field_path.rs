//! The dotted field path (`spec.api.sans[1]`) at a position in a YAML text.
//!
//! serde-saphyr reports where a document failed (line and column) but not
//! which field that is. Rather than wrapping the deserializer in a path
//! tracker (another crate, and its code in the binary; #18), the path is
//! rebuilt only on failure by walking the parser's events up to that
//! position: the last node that starts at or before it names the field, and
//! a mapping key names itself, so an unknown field reads `spec.bogus`.

use serde_saphyr::granit_parser::{Event, Parser};

/// One open collection on the way down to the node being read.
enum Frame {
    /// `key` is the last key read; `want_key` says the next node is a key.
    Mapping { key: String, want_key: bool },
    /// `next` is the index the next item gets.
    Sequence { next: usize },
}

/// The path of the node at or last before (`line`, `column`), both
/// 1-based as serde-saphyr's `Location` gives them. `None` when the
/// position is the document itself or the text does not parse that far.
pub fn path_at(text: &str, line: u64, column: u64) -> Option<String> {
    let target = (line, column);
    let mut stack: Vec<Frame> = Vec::new();
    let mut found: Option<Vec<String>> = None;
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let is_node = matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        );
        if !is_node {
            if matches!(event, Event::SequenceEnd | Event::MappingEnd) {
                stack.pop();
                finish_value(&mut stack);
            }
            continue;
        }
        // Marker columns are 0-based, lines 1-based.
        let at = (span.start.line() as u64, span.start.col() as u64 + 1);
        if at > target {
            break;
        }
        let is_key = matches!(stack.last(), Some(Frame::Mapping { want_key: true, .. }));
        if is_key {
            let name = match &event {
                Event::Scalar(value, ..) => value.to_string(),
                _ => "?".to_string(),
            };
            if let Some(Frame::Mapping { key, want_key }) = stack.last_mut() {
                *key = name;
                *want_key = false;
            }
        }
        found = Some(path_of(&stack));
        match event {
            Event::MappingStart(..) => stack.push(Frame::Mapping {
                key: String::new(),
                want_key: true,
            }),
            Event::SequenceStart(..) => stack.push(Frame::Sequence { next: 0 }),
            _ if is_key => {}
            _ => finish_value(&mut stack),
        }
    }
    found.filter(|p| !p.is_empty()).map(|p| join(&p))
}

/// The current path: every open collection's key or index.
fn path_of(stack: &[Frame]) -> Vec<String> {
    stack
        .iter()
        .map(|f| match f {
            Frame::Mapping { key, .. } => key.clone(),
            Frame::Sequence { next } => format!("[{next}]"),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// A value (scalar or whole collection) ended in the innermost frame.
fn finish_value(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Mapping { want_key, .. }) => *want_key = true,
        Some(Frame::Sequence { next }) => *next += 1,
        None => {}
    }
}

fn join(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::path_at;

    const DOC: &str =
        "kind: X\nspec:\n  api:\n    port: 1\n    sans:\n      - a\n      - b\n  bogus: 2\n";

    #[test]
    fn names_keys_values_and_items() {
        assert_eq!(path_at(DOC, 1, 1).as_deref(), Some("kind"));
        assert_eq!(path_at(DOC, 4, 11).as_deref(), Some("spec.api.port"));
        assert_eq!(path_at(DOC, 4, 5).as_deref(), Some("spec.api.port"));
        assert_eq!(path_at(DOC, 7, 9).as_deref(), Some("spec.api.sans[1]"));
        assert_eq!(path_at(DOC, 8, 3).as_deref(), Some("spec.bogus"));
    }

    #[test]
    fn flow_collections_and_the_document_itself() {
        let doc = "spec: {api: {sans: [x, y]}}\n";
        assert_eq!(path_at(doc, 1, 25).as_deref(), Some("spec.api.sans[1]"));
        assert_eq!(path_at("", 1, 1), None);
        // Text that stops parsing: the last node read before the break.
        assert_eq!(path_at("a: [1\n", 1, 5).as_deref(), Some("a"));
    }
}
