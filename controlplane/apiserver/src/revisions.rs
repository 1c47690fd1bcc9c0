//! `resourceVersion` and `resourceVersionMatch` on reads, as kube-apiserver serves them:
//! unset is the latest state; "0" any state; a revision with `NotOlderThan` (the default) a state
//! at least that new; `Exact` the state at exactly that revision (410 once compacted). A revision
//! the store has not reached yet gets 504 `Too large resource version`.

use std::collections::HashMap;

use serde_json::json;
use skiff_store::Store;

use crate::status::{ApiError, ApiResult};

/// The revision a list is to be read at: `Some` for `resourceVersionMatch=Exact`, `None` for the
/// latest state. Checks the combination of parameters and that the revision is not in the
/// future.
pub async fn for_list(store: &dyn Store, q: &HashMap<String, String>) -> ApiResult<Option<u64>> {
    let rv = q
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let continuing = q.get("continue").is_some_and(|c| !c.is_empty());
    let matching = q
        .get("resourceVersionMatch")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let Some(m) = matching else {
        return not_newer_than_store(store, rv).await.map(|_| None);
    };
    if rv.is_none() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    if continuing {
        return Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
        ));
    }
    match m {
        "NotOlderThan" => not_newer_than_store(store, rv).await.map(|_| None),
        "Exact" if rv == Some("0") => Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        )),
        "Exact" => not_newer_than_store(store, rv).await,
        other => Err(ApiError::bad_request(format!(
            "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

/// For a GET: the object is served at the latest revision, which must not be older than the
/// one asked for.
pub async fn for_get(store: &dyn Store, q: &HashMap<String, String>) -> ApiResult<()> {
    let rv = q
        .get("resourceVersion")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    not_newer_than_store(store, rv).await.map(|_| ())
}

/// Parses a requested revision ("0" and unset ask for none) and refuses one the store has not
/// reached.
async fn not_newer_than_store(store: &dyn Store, rv: Option<&str>) -> ApiResult<Option<u64>> {
    let Some(rv) = rv.filter(|rv| *rv != "0") else {
        return Ok(None);
    };
    let rv: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?;
    let current = store.current_revision().await?;
    if rv > current {
        let mut e = ApiError::timeout(
            format!("Too large resource version: {rv}, current: {current}"),
            1,
        );
        if let Some(d) = e.details.as_mut() {
            d["causes"] = json!([{"reason": "ResourceVersionTooLarge",
                "message": "Too large resource version"}]);
        }
        return Err(e);
    }
    Ok(Some(rv))
}
