//! The path (`linux.resources.memory.limit`, `mounts[2].options`) of the JSON value at a
//! serde_json error's line and column, so that a bad config.json names the field.
//!
//! serde_json reports where it stopped, not which field it was reading. Rather than running every
//! parse through a path-tracking deserializer (as large again as the plain one, and paged in at
//! every container start), the text up to the error is scanned once more, here, only on failure.

/// One level of nesting at the scanned position.
enum Frame {
    /// In an object: the key whose value is being read, if one has been read since `{` or `,`.
    Object(Option<String>),
    /// In an array: the index of the element being read.
    Array(usize),
}

/// The path of the value being read at `line`/`column` (as serde_json counts them: lines from
/// 1, bytes of the line read so far) of `text`; "" at the top level. With `whole_object` (a
/// missing field, found at the object's closing brace) the path of the innermost object.
pub fn at(text: &[u8], line: usize, column: usize, whole_object: bool) -> String {
    let line_start = if line <= 1 {
        0
    } else {
        text.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)
            .map_or(text.len(), |(i, _)| i + 1)
    };
    let end = (line_start + column).min(text.len());
    let mut frames = scan(&text[..end]);
    if whole_object && let Some(Frame::Object(key)) = frames.last_mut() {
        *key = None;
    }
    let mut path = String::new();
    for frame in &frames {
        match frame {
            Frame::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            // The object itself (a missing field, a syntax error between members).
            Frame::Object(None) => break,
            Frame::Array(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// The nesting at the end of `text`, a prefix of a JSON document.
fn scan(text: &[u8]) -> Vec<Frame> {
    let mut frames = vec![];
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(text.len());
                // A string right after `{` or `,` in an object is a key.
                if let Some(Frame::Object(key @ None)) = frames.last_mut() {
                    let rest = &text[(end + 1).min(text.len())..];
                    let is_key = rest
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        .is_none_or(|b| *b == b':');
                    if is_key {
                        *key = Some(String::from_utf8_lossy(&text[start..end]).into_owned());
                    }
                }
            }
            b'{' => frames.push(Frame::Object(None)),
            b'[' => frames.push(Frame::Array(0)),
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Object(key)) => *key = None,
                Some(Frame::Array(n)) => *n += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::at;

    /// The path serde_json's error for `text` as `T` points at.
    fn path_of_error<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
        let e = serde_json::from_str::<T>(text).unwrap_err();
        let missing = e.to_string().starts_with("missing field");
        at(text.as_bytes(), e.line(), e.column(), missing)
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        nested: Option<Box<Doc>>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Item {
        size: u64,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        assert_eq!(path_of_error::<Doc>(r#"{"name": 5}"#), "name");
        assert_eq!(
            path_of_error::<Doc>(
                "{\n  \"name\": \"a\",\n  \"items\": [{\"size\": 1}, {\"size\": \"big\"}]\n}"
            ),
            "items[1].size"
        );
        assert_eq!(
            path_of_error::<Doc>(r#"{"name": "a", "items": [{"size": 1, "tags": ["x", 7]}]}"#),
            "items[0].tags[1]"
        );
        assert_eq!(
            path_of_error::<Doc>(
                r#"{"name": "a", "nested": {"name": "b, with: \"quotes\"", "items": {}}}"#
            ),
            "nested.items"
        );
    }

    #[test]
    fn a_missing_field_names_its_object() {
        assert_eq!(
            path_of_error::<Doc>(r#"{"name": "a", "items": [{"tags": []}]}"#),
            "items[0]"
        );
        assert_eq!(path_of_error::<Doc>(r#"{"items": []}"#), "");
    }

    #[test]
    fn a_truncated_document_names_where_it_stopped() {
        assert_eq!(
            path_of_error::<Doc>(r#"{"name": "a", "nested": "#),
            "nested"
        );
        assert_eq!(path_of_error::<Doc>(""), "");
    }
}
