//! Tyk's `validate_json`: an endpoint's request body is checked against its JSON Schema
//! (compiled once; remote `$ref`s are not fetched) before it goes upstream. A body that is not
//! JSON is a 400 `JSON parsing error: …`; one that breaks the schema gets
//! `error_response_code` (422 when unset) and every violation, `; `-joined, each
//! `<field>: <what is wrong>` with `(root)` for the document itself, as Tyk words them.

use http::StatusCode;
use serde_json::Value;

use crate::version::{InvalidField, invalid};

/// Bytes of a body read to be validated at most (Tyk reads it whole; tollgate bounds it,
/// and `max_request_body_size` when lower); more is a 413.
pub const MAX_VALIDATED_BODY: u64 = 8 * 1024 * 1024;

/// One endpoint's schema.
pub struct JsonValidation {
    validator: jsonschema::Validator,
    error_status: StatusCode,
}

impl std::fmt::Debug for JsonValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonValidation")
            .field("error_status", &self.error_status)
            .finish_non_exhaustive()
    }
}

/// Why a body is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonRefusal {
    /// Not JSON: the parser's reason.
    Malformed(String),
    /// Against the schema: the status to answer and the violations.
    Invalid(StatusCode, String),
}

impl JsonValidation {
    /// Compiles `schema` (an entry's, found at `at`) with `error_response_code`.
    pub fn compile(
        schema: &Value,
        error_response_code: i64,
        at: &str,
    ) -> Result<Self, InvalidField> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err(invalid(
                &format!("{at}.schema"),
                "must be a JSON Schema object",
            ));
        }
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| invalid(&format!("{at}.schema"), e.to_string()))?;
        let error_status = match error_response_code {
            0 => StatusCode::UNPROCESSABLE_ENTITY,
            code => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| {
                    invalid(
                        &format!("{at}.error_response_code"),
                        format!("{code} is not an error status"),
                    )
                })?,
        };
        Ok(Self {
            validator,
            error_status,
        })
    }

    /// Checks a body.
    pub fn check(&self, body: &[u8]) -> Result<(), JsonRefusal> {
        let document: Value =
            serde_json::from_slice(body).map_err(|e| JsonRefusal::Malformed(e.to_string()))?;
        let violations: Vec<String> = self
            .validator
            .iter_errors(&document)
            .map(|error| {
                let pointer = error.instance_path().to_string();
                let field = match pointer.trim_start_matches('/') {
                    "" => "(root)".to_owned(),
                    path => path.replace('/', "."),
                };
                format!("{field}: {error}")
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(JsonRefusal::Invalid(
                self.error_status,
                violations.join("; "),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> JsonValidation {
        JsonValidation::compile(
            &json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                "required": ["name"]}),
            0,
            "v",
        )
        .unwrap()
    }

    #[test]
    fn valid_bodies_pass_and_violations_are_named_by_field() {
        let s = schema();
        assert_eq!(s.check(br#"{"name": "ann", "age": 3}"#), Ok(()));
        let Err(JsonRefusal::Invalid(status, message)) = s.check(br#"{"age": -1}"#) else {
            panic!("invalid");
        };
        assert_eq!(status, 422);
        assert!(message.contains("(root): "), "{message}");
        assert!(message.contains("age: "), "{message}");
        assert!(message.contains("; "), "{message}");
        assert!(matches!(
            s.check(b"{not json"),
            Err(JsonRefusal::Malformed(_))
        ));
    }

    #[test]
    fn bad_schemas_and_codes_name_their_field() {
        let e = JsonValidation::compile(&json!({"type": 5}), 0, "v").unwrap_err();
        assert_eq!(e.field, "v.schema");
        let e = JsonValidation::compile(&json!({"type": "object"}), 200, "v").unwrap_err();
        assert_eq!(e.field, "v.error_response_code");
        let s = JsonValidation::compile(&json!({"type": "object"}), 400, "v").unwrap();
        assert!(matches!(s.check(b"[]"), Err(JsonRefusal::Invalid(status, _)) if status == 400));
    }
}
