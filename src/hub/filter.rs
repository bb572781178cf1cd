//! A norn's optional filter: a CEL expression over `event`, compiled once at registration and
//! evaluated for each event of the norn's key. An event passes when the expression is `true`;
//! `false`, any other value or an evaluation error (a missing field, say) holds it back.
//!
//! `event` has the envelope's fields (`id`, `key`, `kind`, `source`, `time_ms`, `content_type`,
//! `payload`: JSON when the content type is JSON, else base64 text) and, for WRP events, `wrp`
//! with the message's fields (`source`, `dest`, `metadata`, `partner_ids`, …).

use std::sync::{Arc, LazyLock};

use cel::{Context, Env, Program, Value};
use serde::Serialize;

use crate::event::{Envelope, Event};
use crate::wrp::WrpMessage;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// The longest filter accepted, in bytes.
pub const MAX_LEN: usize = 2048;

/// A compiled filter.
pub struct Filter {
    program: Program,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter")
    }
}

#[derive(Serialize)]
struct FilterInput<'a> {
    #[serde(flatten)]
    envelope: Envelope<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wrp: Option<&'a WrpMessage>,
}

impl Filter {
    /// Compiles `source`; it may refer to no variable but `event`. Filters run on the ingest path
    /// for every event of their key, so their cost must stay linear in their length: at most
    /// [`MAX_LEN`] bytes and no comprehension macros (`all`, `exists`, `exists_one`, `map`,
    /// `filter`), whose nesting would multiply it.
    pub fn compile(source: &str) -> Result<Filter, String> {
        if source.len() > MAX_LEN {
            return Err(format!("a filter may have at most {MAX_LEN} bytes"));
        }
        let squeezed: String = source.chars().filter(|c| !c.is_whitespace()).collect();
        for name in ["all", "exists", "exists_one", "map", "filter"] {
            if squeezed.contains(&format!(".{name}(")) {
                return Err(format!("the `{name}` macro is not allowed in filters"));
            }
        }
        let program = ENV.compile(source).map_err(|error| error.to_string())?;
        let references = program.references();
        if let Some(unknown) = references
            .variables()
            .into_iter()
            .find(|name| *name != "event")
        {
            return Err(format!(
                "unknown variable `{unknown}`; the event is `event`"
            ));
        }
        Ok(Filter { program })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let input = FilterInput {
            envelope: event.envelope(),
            wrp: event.wrp.as_ref(),
        };
        let mut context = Context::with_env(ENV.clone());
        if context.add_variable("event", input).is_err() {
            return false;
        }
        matches!(self.program.execute(&context), Ok(Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(kind: &str, payload: &str) -> Event {
        Event {
            id: Event::new_id(),
            key: "mac:112233445566".into(),
            kind: kind.into(),
            source: "wrp",
            time_ms: 1,
            content_type: "application/json".into(),
            payload: Bytes::from(payload.to_owned()),
            wrp: Some(WrpMessage {
                msg_type: 4,
                source: "mac:112233445566".into(),
                metadata: [("/fw".to_string(), "1.2".to_string())].into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn filters_on_fields_and_payload() {
        let online = Filter::compile("event.kind == 'device-status/online'").unwrap();
        assert!(online.matches(&event("device-status/online", "{}")));
        assert!(!online.matches(&event("device-status/offline", "{}")));
        let payload = Filter::compile("event.payload.temp > 30").unwrap();
        assert!(payload.matches(&event("t", r#"{"temp": 31}"#)));
        assert!(!payload.matches(&event("t", r#"{"temp": 3}"#)));
        // A missing field is an evaluation error: the event is held back, nothing panics.
        assert!(!payload.matches(&event("t", r#"{"other": 1}"#)));
        let metadata = Filter::compile("event.wrp.metadata['/fw'] == '1.2'").unwrap();
        assert!(metadata.matches(&event("t", "{}")));
    }

    #[test]
    fn refuses_bad_expressions() {
        assert!(Filter::compile("event.kind ==").is_err());
        assert!(Filter::compile("other.kind == 'x'").is_err());
        assert!(Filter::compile("[1,2].all(a, [1,2].all(b, a == b))").is_err());
        assert!(Filter::compile("event.wrp.partner_ids.exists (p, p == 'x')").is_err());
        assert!(Filter::compile(&format!("event.kind == '{}'", "x".repeat(MAX_LEN))).is_err());
    }
}
