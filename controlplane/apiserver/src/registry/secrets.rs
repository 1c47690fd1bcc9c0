//! Secret (`v1`, `secrets`).

use base64::Engine;

use super::prelude::*;

pub static RESOURCE: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    storage: "secrets",
    schema: "io.k8s.api.core.v1.Secret",
    strategy: &SecretStrategy,
};

struct SecretStrategy;

impl Strategy for SecretStrategy {
    fn default(&self, root: &mut Map<String, Value>) {
        default(root, "type", json!("Opaque"));
        if let Some(Value::Object(sd)) = root.remove("stringData") {
            let data = child(root, "data");
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }

    fn validate(&self, o: &Value, errs: &mut Vec<FieldError>) {
        data_keys("data", o, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable_data(old, new, errs);
        immutable("type", old, new, errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Type", "string", 0, "The type of the secret"),
            ("Data", "string", 0, "The number of data entries"),
            AGE,
        ]
    }

    fn cells(&self, o: &Value) -> Vec<Value> {
        let name = json!(s(o, "/metadata/name"));
        vec![
            name,
            json!(s(o, "/type")),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            age(o),
        ]
    }
}
