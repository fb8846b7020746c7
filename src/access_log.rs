//! Tyk 5's access logs (`access_logs`): one JSON line per request an API answered, with
//! Tyk's field names, its `template` choosing the fields, and the key never written raw
//! (obfuscated, or its hash with `hash_keys`). Lines are written by a thread of their own from
//! a bounded queue, so a slow disk or pipe never holds a request up: a line that finds the
//! queue full is dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::io::Write;
use std::sync::mpsc;

use crate::request_record::RequestRecord;

/// The request id passed upstream and returned: a client's own is kept when it is one.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Lines waiting to be written at most; more are dropped.
const QUEUE: usize = 8192;

/// A client's `X-Request-Id` is kept up to this length (visible ASCII only).
const MAX_REQUEST_ID: usize = 200;

/// Tyk's field names, in the order written (that of its `Template` documentation).
pub const FIELDS: [&str; 20] = [
    "api_id",
    "api_key",
    "api_name",
    "client_ip",
    "host",
    "latency_gateway",
    "latency_total",
    "method",
    "org_id",
    "original_path",
    "path",
    "protocol",
    "remote_addr",
    "request_id",
    "status",
    "trace_id",
    "upstream_addr",
    "upstream_latency",
    "user_agent",
    "api_type",
];

/// Fields of Tyk's `template` that tollgate has no value for (error classification, TLS
/// details of an upstream error, MCP): reported at start, left out of the lines.
pub const UNFILLED: [&str; 12] = [
    "circuit_breaker_state",
    "error_source",
    "error_target",
    "response_code_details",
    "response_flag",
    "tls_cert_expiry",
    "tls_cert_subject",
    "upstream_status",
    "mcp_method",
    "mcp_primitive_type",
    "mcp_primitive_name",
    "mcp_error_code",
];

/// The access log: its fields and the queue to its writer.
pub struct AccessLog {
    /// Which of [`FIELDS`] are written.
    fields: [bool; FIELDS.len()],
    queue: mpsc::SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    /// `hash_keys`: the key is logged by its hash, else obfuscated.
    hash_keys: bool,
}

impl AccessLog {
    /// Starts the writer thread, appending to `path`, or standard output when it is empty;
    /// `template` is Tyk's (empty: every field).
    pub fn start(template: &[String], path: &str, hash_keys: bool) -> std::io::Result<Self> {
        let mut fields = [template.is_empty(); FIELDS.len()];
        for name in template {
            if let Some(i) = FIELDS.iter().position(|f| f == name) {
                fields[i] = true;
            }
        }
        let out: Box<dyn Write + Send> = if path.is_empty() {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        // A thread of its own: a write to a file or a pipe blocks, and no worker may.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&lines, out))?;
        Ok(Self {
            fields,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            hash_keys,
        })
    }

    /// Queues `entry`'s line; dropped (and counted) when the writer is behind.
    pub fn log(&self, entry: &RequestRecord) {
        let line = self.line(entry);
        if self.queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The JSON line, written field by field (strings escaped by serde_json).
    fn line(&self, e: &RequestRecord) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(b"{\"time\":\"");
        let _ = write!(
            line,
            "{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        line.extend_from_slice(b"\",\"level\":\"info\",\"prefix\":\"access-log\"");
        let key = (!e.key_id.is_empty()).then(|| logged_key(&e.key_id, self.hash_keys));
        for (i, name) in FIELDS.iter().enumerate() {
            if !self.fields[i] {
                continue;
            }
            let value = match *name {
                "api_id" => Field::Text(&e.api_id),
                "api_key" => match &key {
                    Some(key) => Field::Text(key),
                    None => continue,
                },
                "api_name" => Field::Text(&e.api_name),
                "client_ip" => Field::Text(&e.client_ip),
                "host" => Field::Text(&e.host),
                "latency_gateway" => Field::Number(e.latency_gateway()),
                "latency_total" => Field::Number(e.latency_total),
                "method" => Field::Text(&e.method),
                "org_id" => Field::Text(&e.org_id),
                "original_path" => match &e.original_path {
                    Some(path) => Field::Text(path),
                    None => continue,
                },
                "path" => Field::Text(&e.path),
                "protocol" => Field::Text(e.protocol),
                "remote_addr" => Field::Text(&e.remote_addr),
                "request_id" => Field::Text(&e.request_id),
                "status" => Field::Number(u64::from(e.status)),
                "trace_id" => match &e.trace_id {
                    Some(id) => Field::Text(id),
                    None => continue,
                },
                "upstream_addr" => Field::Text(&e.upstream_addr),
                "upstream_latency" => Field::Number(e.upstream_latency),
                "user_agent" => Field::Text(&e.user_agent),
                "api_type" => Field::Text("classic"),
                _ => continue,
            };
            let _ = write!(line, ",\"{name}\":");
            match value {
                Field::Text(text) => {
                    let _ = serde_json::to_writer(&mut line, text);
                }
                Field::Number(n) => {
                    let _ = write!(line, "{n}");
                }
            }
        }
        line.extend_from_slice(b"}\n");
        line
    }
}

/// A field's value in a line.
enum Field<'a> {
    Text(&'a str),
    Number(u64),
}

/// How long the writer lets lines gather after the first before it writes them: under load
/// one wake-up and one write for many lines, instead of one per request.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Writes queued lines: it waits for one, lets others gather for [`GATHER`], then writes all.
fn write_lines(lines: &mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = lines.recv() {
        std::thread::sleep(GATHER);
        let mut failed = out.write_all(&line).err();
        while let Ok(more) = lines.try_recv() {
            if let Err(e) = out.write_all(&more) {
                failed = Some(e);
            }
        }
        if let Err(e) = out.flush() {
            failed = Some(e);
        }
        if let Some(e) = failed {
            tracing::warn!("access log: cannot write: {e}");
        }
    }
}

/// The key as Tyk's access log shows it: with `hash_keys`, the key's storage id (its hash);
/// otherwise `****` and its last four characters (`--` for a shorter one), Tyk's
/// `obfuscateKey`.
pub fn logged_key(key_id: &str, hash_keys: bool) -> String {
    if hash_keys {
        return key_id.to_owned();
    }
    let chars: Vec<char> = key_id.chars().collect();
    if chars.len() > 4 {
        let last: String = chars[chars.len() - 4..].iter().collect();
        format!("****{last}")
    } else {
        "--".into()
    }
}

/// The request's id: the client's `X-Request-Id` when it is a plausible one (visible ASCII,
/// at most 200 bytes), else a new UUID.
pub fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID
                && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            http::HeaderValue::from_str(&id).unwrap_or(http::HeaderValue::from_static("-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_never_logged_raw() {
        assert_eq!(logged_key("secretkey1234", false), "****1234");
        assert_eq!(logged_key("abcd", false), "--");
        assert_eq!(logged_key("c0ffee", true), "c0ffee");
    }

    #[test]
    fn a_clients_request_id_is_kept_only_when_plausible() {
        let mut headers = http::HeaderMap::new();
        headers.insert(&REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(&REQUEST_ID, "has space".parse().unwrap());
        assert_eq!(request_id(&headers).len(), 36);
        headers.insert(&REQUEST_ID, "x".repeat(201).parse().unwrap());
        assert_eq!(request_id(&headers).len(), 36);
    }

    #[test]
    fn the_template_picks_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let template = vec!["api_id".to_owned(), "status".to_owned()];
        let log = AccessLog::start(&template, path.to_str().unwrap(), false).unwrap();
        let entry = RequestRecord {
            api_id: "a1".into(),
            key_id: "secretkey1234".into(),
            status: 201,
            ..RequestRecord::default()
        };
        let line: serde_json::Value = serde_json::from_slice(&log.line(&entry)).unwrap();
        assert_eq!(line["api_id"], "a1");
        assert_eq!(line["status"], 201);
        assert_eq!(line["prefix"], "access-log");
        assert!(line.get("api_key").is_none() && line.get("path").is_none());
    }
}
