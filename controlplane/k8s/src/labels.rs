//! Label selectors: kube's [`Selector`] and [`Expression`] (the one representation every
//! component matches labels with), parsed from the string form list and watch requests carry
//! (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) or built from a workload's `spec.selector`.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use kube_core::{Expression, Selector, SelectorExt};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorParseError(String);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn set_values(s: &str) -> Result<BTreeSet<String>, SelectorParseError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorParseError(format!(
                "unable to parse requirement: found '{s}', expected: '('"
            ))
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

/// Parses the string form of a label selector; the empty string selects everything.
pub fn parse(s: &str) -> Result<Selector, SelectorParseError> {
    split_top(s)
        .into_iter()
        .map(|part| {
            Ok(if let Some(k) = part.strip_prefix('!') {
                Expression::DoesNotExist(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Expression::NotEqual(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Expression::Equal(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Expression::Equal(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Expression::NotIn(k.trim().into(), set_values(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Expression::In(k.trim().into(), set_values(v)?)
            } else if part.contains(' ') || part.contains('(') {
                return Err(SelectorParseError(format!(
                    "unable to parse requirement: {part}"
                )));
            } else {
                Expression::Exists(part)
            })
        })
        .collect()
}

/// The selector a workload's `spec.selector` (matchLabels + matchExpressions) means; `None` when
/// an expression's operator is not one of `In`, `NotIn`, `Exists`, `DoesNotExist`.
pub fn from_label_selector(sel: &LabelSelector) -> Option<Selector> {
    Selector::try_from(sel.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn string_forms() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!app", false),
            ("!missing,app in (web)", true),
            ("", true),
        ] {
            assert_eq!(parse(sel).unwrap().matches(&labels), want, "{sel}");
        }
        assert!(parse("a in b").is_err());
        assert_eq!(
            parse("app = web, tier in (b,a)").unwrap().to_string(),
            "app=web,tier in (a,b)"
        );
    }
}
