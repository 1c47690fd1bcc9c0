//! The URL query as the key/value pairs it holds, in order (`command=sh&command=-c` repeats a
//! key, which a map-shaped query extractor would lose).

/// The decoded pairs of `query` (`+` is a space, `%XX` a byte).
pub fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Every value of `key`.
pub fn all<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The first value of `key`.
pub fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A boolean flag: present as `1` or `true` (any case).
pub fn flag(pairs: &[(String, String)], key: &str) -> bool {
    first(pairs, key).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_repeated_keys() {
        let p = pairs(Some(
            "command=sh&command=-c&command=echo+a%26b%3D1&tty=true&stdin=0&x=%zz",
        ));
        assert_eq!(
            all(&p, "command").collect::<Vec<_>>(),
            ["sh", "-c", "echo a&b=1"]
        );
        assert!(flag(&p, "tty"));
        assert!(!flag(&p, "stdin"));
        assert!(!flag(&p, "stdout"));
        assert_eq!(first(&p, "x"), Some("%zz"));
    }
}
