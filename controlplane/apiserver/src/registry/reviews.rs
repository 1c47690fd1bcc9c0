//! The review APIs: `authentication.k8s.io/v1` TokenReview and SelfSubjectReview,
//! `authorization.k8s.io/v1` SubjectAccessReview, SelfSubjectAccessReview,
//! LocalSubjectAccessReview and SelfSubjectRulesReview. Create-only and never stored: the
//! answer is computed by `auth::reviews` and returned in the object's status.

use super::prelude::*;

struct ReviewStrategy;

impl Strategy for ReviewStrategy {
    fn verbs(&self) -> &'static [&'static str] {
        &["create"]
    }
}

macro_rules! review {
    ($static:ident, $group:literal, $package:literal, $kind:literal, $plural:literal, $singular:literal, $namespaced:literal) => {
        pub static $static: ResourceInfo = ResourceInfo {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[],
            categories: &[],
            subresources: &[],
            storage: $plural,
            schema: concat!("io.k8s.api.", $package, ".v1.", $kind),
            strategy: &ReviewStrategy,
        };
    };
}

review!(
    TOKEN_REVIEWS,
    "authentication.k8s.io",
    "authentication",
    "TokenReview",
    "tokenreviews",
    "tokenreview",
    false
);
review!(
    SELF_SUBJECT_REVIEWS,
    "authentication.k8s.io",
    "authentication",
    "SelfSubjectReview",
    "selfsubjectreviews",
    "selfsubjectreview",
    false
);
review!(
    SUBJECT_ACCESS_REVIEWS,
    "authorization.k8s.io",
    "authorization",
    "SubjectAccessReview",
    "subjectaccessreviews",
    "subjectaccessreview",
    false
);
review!(
    SELF_SUBJECT_ACCESS_REVIEWS,
    "authorization.k8s.io",
    "authorization",
    "SelfSubjectAccessReview",
    "selfsubjectaccessreviews",
    "selfsubjectaccessreview",
    false
);
review!(
    LOCAL_SUBJECT_ACCESS_REVIEWS,
    "authorization.k8s.io",
    "authorization",
    "LocalSubjectAccessReview",
    "localsubjectaccessreviews",
    "localsubjectaccessreview",
    true
);
review!(
    SELF_SUBJECT_RULES_REVIEWS,
    "authorization.k8s.io",
    "authorization",
    "SelfSubjectRulesReview",
    "selfsubjectrulesreviews",
    "selfsubjectrulesreview",
    false
);
