//! Tyk's header transforms, compiled once: a version's `global_headers` and
//! `global_headers_remove` and an endpoint's `transform_headers` on the request; a version's
//! `global_response_headers(_remove)` and an endpoint's `transform_response_headers` on the
//! response, followed there by the API's `header_injector` response processor. An edit
//! removes, then sets (replacing any value there); values may hold Tyk's variables (see
//! `variables`).

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::variables::{Scope, Secrets, Template};
use crate::version::{InvalidField, invalid};

/// Headers removed, then set.
#[derive(Debug, Default, Clone)]
pub struct HeaderEdit {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderText)]>,
    /// A value holds a variable: only then is the edit rendered per request.
    templated: bool,
}

#[derive(Debug, Clone)]
enum HeaderText {
    Fixed(HeaderValue),
    Template(Template),
}

impl HeaderEdit {
    /// The edit of `remove` and `set`, their fields named `{at}.{remove_field}` and
    /// `{at}.{set_field}`, its values' secrets filled in from `secrets`. Also returns the
    /// variables in its values that tollgate leaves empty.
    pub fn compile(
        remove: &[String],
        set: &Map<String, serde_json::Value>,
        at: (&str, &str, &str),
        secrets: &Secrets,
    ) -> Result<(Self, Vec<String>), InvalidField> {
        let (base, remove_field, set_field) = at;
        let name = |text: &str, field: String| {
            HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| invalid(&field, format!("{text:?} is not a header name")))
        };
        let remove = remove
            .iter()
            .enumerate()
            .map(|(i, text)| name(text, format!("{base}.{remove_field}[{i}]")))
            .collect::<Result<_, _>>()?;
        let mut unfilled = Vec::new();
        let mut sets = Vec::with_capacity(set.len());
        for (key, value) in set {
            let field = format!("{base}.{set_field}.{key}");
            let Some(value) = value.as_str() else {
                return Err(invalid(&field, "must be a string"));
            };
            let header = name(key, field.clone())?;
            let (template, mut missing) = Template::compile(value, secrets);
            unfilled.extend(missing.drain(..).map(|v| format!("{field}: {v}")));
            let text = match template.as_text() {
                Some(text) => HeaderText::Fixed(
                    HeaderValue::from_str(text)
                        .map_err(|_| invalid(&field, "is not a header value"))?,
                ),
                None => HeaderText::Template(template),
            };
            sets.push((header, text));
        }
        let edit = Self {
            remove,
            templated: any_template(&sets),
            set: sets.into(),
        };
        Ok((edit, unfilled))
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Whether a value has a `request_data_` variable, which may read a form body.
    pub fn reads_request_data(&self) -> bool {
        self.templated
            && self.set.iter().any(|(_, text)| match text {
                HeaderText::Fixed(_) => false,
                HeaderText::Template(template) => template.reads_request_data(),
            })
    }

    /// This edit followed by `next`, as one edit: a header `next` removes or sets is no
    /// longer set by this one.
    pub fn then(&self, next: &HeaderEdit) -> HeaderEdit {
        let mut remove = self.remove.to_vec();
        remove.extend(
            next.remove
                .iter()
                .filter(|n| !self.remove.contains(n))
                .cloned(),
        );
        let overridden = |name: &HeaderName| {
            next.remove.contains(name) || next.set.iter().any(|(n, _)| n == name)
        };
        let set: Box<[_]> = self
            .set
            .iter()
            .filter(|(name, _)| !overridden(name))
            .chain(next.set.iter())
            .cloned()
            .collect();
        HeaderEdit {
            remove: remove.into(),
            templated: any_template(&set),
            set,
        }
    }

    /// The edit with its templates' values rendered in `scope` (a response's edit is
    /// rendered while the request is at hand, as its variables are the request's).
    pub fn render(&self, scope: &Scope<'_>) -> RenderedEdit<'_> {
        if !self.templated {
            let values = Box::default();
            return RenderedEdit { edit: self, values };
        }
        let values = self
            .set
            .iter()
            .filter_map(|(_, text)| match text {
                HeaderText::Fixed(_) => None,
                HeaderText::Template(template) => {
                    Some(HeaderValue::from_str(&template.render(scope)).ok())
                }
            })
            .collect();
        RenderedEdit { edit: self, values }
    }
}

fn any_template(set: &[(HeaderName, HeaderText)]) -> bool {
    set.iter()
        .any(|(_, text)| matches!(text, HeaderText::Template(_)))
}

/// `response_processors`: the `header_injector` processor's `options` (`remove_headers`, then
/// `add_headers`), which Tyk applies to every response after a version's own response
/// headers (not where the version sets `global_response_headers_disabled`). Also returns what
/// tollgate leaves out, for the load's report: the variables without a value, and any other
/// processor (Tyk's `header_transform` and its plugin hooks), by field.
pub fn response_injector(
    processors: Option<&Value>,
    secrets: &Secrets,
) -> Result<(HeaderEdit, Vec<String>), InvalidField> {
    #[derive(Deserialize)]
    struct Processor {
        name: String,
        #[serde(default)]
        options: Option<InjectorOptions>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct InjectorOptions {
        add_headers: Map<String, Value>,
        remove_headers: Vec<String>,
    }
    let Some(processors) = processors.filter(|p| !p.is_null()) else {
        return Ok((HeaderEdit::default(), Vec::new()));
    };
    let processors: Vec<Value> = serde_json::from_value(processors.clone())
        .map_err(|e| invalid("response_processors", e.to_string()))?;
    let mut edit = HeaderEdit::default();
    let mut left_out = Vec::new();
    for (i, processor) in processors.into_iter().enumerate() {
        let at = format!("response_processors[{i}]");
        let processor: Processor =
            serde_json::from_value(processor).map_err(|e| invalid(&at, e.to_string()))?;
        if processor.name != "header_injector" {
            left_out.push(format!(
                "{at}: {} (a processor tollgate does not run)",
                processor.name
            ));
            continue;
        }
        let options = processor.options.unwrap_or_default();
        let (next, unfilled) = HeaderEdit::compile(
            &options.remove_headers,
            &options.add_headers,
            (&format!("{at}.options"), "remove_headers", "add_headers"),
            secrets,
        )?;
        left_out.extend(
            unfilled
                .into_iter()
                .map(|v| format!("{v} (a variable tollgate leaves empty)")),
        );
        edit = edit.then(&next);
    }
    Ok((edit, left_out))
}

/// An edit whose values are rendered, ready to apply.
#[derive(Debug)]
pub struct RenderedEdit<'a> {
    edit: &'a HeaderEdit,
    /// Each template's value, in order; `None` where it was not a valid header value.
    values: Box<[Option<HeaderValue>]>,
}

impl RenderedEdit<'_> {
    /// Removes, then sets, in `headers` (a value that is not a valid header value is left
    /// unset).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &*self.edit.remove {
            headers.remove(name);
        }
        let mut rendered = self.values.iter();
        for (name, text) in &*self.edit.set {
            let value = match text {
                HeaderText::Fixed(value) => Some(value.clone()),
                HeaderText::Template(_) => rendered.next().cloned().flatten(),
            };
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use serde_json::json;
    use std::cell::OnceCell;

    fn edit(remove: &[&str], set: serde_json::Value) -> HeaderEdit {
        let remove: Vec<String> = remove.iter().map(|s| s.to_string()).collect();
        let set = set.as_object().unwrap().clone();
        HeaderEdit::compile(
            &remove,
            &set,
            ("t", "delete_headers", "add_headers"),
            &Secrets::default(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn removes_then_sets_over_what_is_there_with_variables() {
        let (request, ()) = Request::builder()
            .uri("/a/b")
            .header("x-old", "1")
            .header("x-keep", "1")
            .header("x-over", "a")
            .header("x-over", "b")
            .body(())
            .unwrap()
            .into_parts();
        let e = edit(
            &["X-Old", "x-absent"],
            json!({"x-over": "c", "x-tier": "$tyk_meta.tier", "x-path": "at $tyk_context.path"}),
        );
        let meta = [("tier".into(), "gold".into())];
        let request_id = OnceCell::new();
        let scope = Scope {
            request: &request,
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            xff_depth: 0,
            request_id: &request_id,
            meta: Some(&meta),
            context_vars: true,
            captures: &[],
            body: None,
        };
        let mut headers = request.headers.clone();
        e.render(&scope).apply(&mut headers);
        assert!(!headers.contains_key("x-old"));
        assert_eq!(headers["x-keep"], "1");
        let over: Vec<_> = headers.get_all("x-over").iter().collect();
        assert_eq!(over, ["c"]);
        assert_eq!(headers["x-tier"], "gold");
        assert_eq!(headers["x-path"], "at /a/b");
        // The response side: rendered with the request, applied to the response.
        let rendered = e.render(&scope);
        let mut response = HeaderMap::new();
        response.insert("x-old", HeaderValue::from_static("1"));
        rendered.apply(&mut response);
        assert!(!response.contains_key("x-old"));
        assert_eq!(response["x-tier"], "gold");
        assert_eq!(response["x-over"], "c");
    }

    #[test]
    fn bad_names_and_values_name_their_field() {
        let at = ("v", "global_headers_remove", "global_headers");
        let none = Secrets::default();
        let bad_remove =
            HeaderEdit::compile(&["bad name".into()], &Map::new(), at, &none).unwrap_err();
        assert_eq!(bad_remove.field, "v.global_headers_remove[0]");
        let set = json!({"x-a": "line\nbreak"}).as_object().unwrap().clone();
        let bad_value = HeaderEdit::compile(&[], &set, at, &none).unwrap_err();
        assert_eq!(bad_value.field, "v.global_headers.x-a");
        let set = json!({"x-a": 5}).as_object().unwrap().clone();
        assert!(HeaderEdit::compile(&[], &set, at, &none).is_err());
    }

    #[test]
    fn one_edit_then_another_is_their_effect_in_order() {
        let first = edit(&["x-a"], json!({"x-b": "1", "x-c": "1", "x-d": "1"}));
        let next = edit(&["x-b", "x-up"], json!({"x-c": "2"}));
        let both = first.then(&next);
        let request = Request::builder()
            .header("x-a", "up")
            .header("x-up", "up")
            .header("x-kept", "up")
            .body(())
            .unwrap();
        let (parts, _) = request.into_parts();
        let mut headers = parts.headers.clone();
        let id = OnceCell::new();
        let scope = Scope {
            request: &parts,
            peer: "127.0.0.1".parse().unwrap(),
            xff_depth: 0,
            request_id: &id,
            meta: None,
            context_vars: false,
            captures: &[],
            body: None,
        };
        both.render(&scope).apply(&mut headers);
        let seen = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(seen("x-a"), None);
        assert_eq!(seen("x-b"), None, "removed by the later edit");
        assert_eq!(seen("x-c").as_deref(), Some("2"));
        assert_eq!(seen("x-d").as_deref(), Some("1"));
        assert_eq!(seen("x-up"), None);
        assert_eq!(seen("x-kept").as_deref(), Some("up"));
    }

    #[test]
    fn the_header_injector_processor_is_read_and_others_are_named() {
        let processors = json!([
            {"name": "header_injector", "options": {"add_headers": {"x-a": "1"}, "remove_headers": ["server"]}},
            {"name": "header_transform", "options": {"rev_proxy_header_cleanup": {}}}
        ]);
        let (edit, left_out) = response_injector(Some(&processors), &Secrets::default()).unwrap();
        assert!(!edit.is_empty());
        assert_eq!(
            left_out,
            ["response_processors[1]: header_transform (a processor tollgate does not run)"]
        );
        let bad = json!([{"name": "header_injector", "options": {"add_headers": {"x a": "1"}}}]);
        let e = response_injector(Some(&bad), &Secrets::default()).unwrap_err();
        assert_eq!(e.field, "response_processors[0].options.add_headers.x a");
    }
}
