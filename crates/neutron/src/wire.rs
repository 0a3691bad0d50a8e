//! oslo.messaging's RPC messages as they travel in AMQP bodies (pure: bytes in, values out).
//!
//! - Every body is the envelope `{"oslo.version": "2.0", "oslo.message": "<inner JSON as a
//!   string>"}` (`_drivers/common.py` `serialize_msg`). Reading is as liberal as oslo's
//!   `deserialize_msg`: a dict without both envelope keys is taken as the message itself.
//! - A request carries `method`, `args`, `version`, `namespace` (only when set, as
//!   `RPCClient._make_message`), `_unique_id`, one `_context_<key>` per context key, and for
//!   a call `_msg_id`, `_reply_q` and `_timeout` (`amqpdriver.py` `_send`).
//! - A reply is `{"result", "failure", "ending", "_msg_id", "_unique_id"}`; a failure is the
//!   JSON *string* `{"class", "module", "message", "tb", "args", "kwargs"}`
//!   (`serialize_remote_exception`).

use std::fmt;

use l3agent_types::clean_message;
use serde_json::{json, Map, Value};

use crate::error::NeutronError;

/// The envelope version oslo.messaging writes and accepts (`_RPC_ENVELOPE_VERSION`).
pub const ENVELOPE_VERSION: &str = "2.0";

/// 16 random bytes as a version-4 UUID.
fn uuid4_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS generator: fall back to a seeded PRNG (unique enough for queue names).
        for x in &mut b {
            *x = fastrand::u8(..);
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// `uuid.uuid4().hex`: 32 lowercase hex digits (queue names, `_msg_id`, `_unique_id`).
pub fn uuid4_hex() -> String {
    uuid4_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `str(uuid.uuid4())`: the hyphenated form (request ids, the agent's report uuid).
pub fn uuid4() -> String {
    let h = uuid4_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// oslo's `version_is_compatible(imp_version, version)`: same major, requested minor (and
/// revision) not above the implemented one. A version that does not parse is incompatible.
pub fn version_is_compatible(implemented: &str, requested: &str) -> bool {
    fn parts(v: &str) -> Option<(u64, u64, u64)> {
        let mut it = v.split('.');
        let major = it.next()?.trim().parse().ok()?;
        let minor = it.next()?.trim().parse().ok()?;
        let rev = match it.next() {
            Some(r) => r.trim().parse().ok()?,
            None => 0,
        };
        Some((major, minor, rev))
    }
    let (Some(imp), Some(req)) = (parts(implemented), parts(requested)) else {
        return false;
    };
    imp.0 == req.0 && (req.1 < imp.1 || (req.1 == imp.1 && req.2 <= imp.2))
}

/// The part of a request that asks for a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct CallHeader {
    /// `_msg_id`: the reply carries it back.
    pub msg_id: String,
    /// `_reply_q`: the queue the reply goes to (through the default exchange).
    pub reply_q: String,
    /// `_timeout`: the caller's call-monitor timeout (`null`: none).
    pub timeout: Value,
}

/// One RPC request (the inner message).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// Its keyword arguments.
    pub args: Map<String, Value>,
    /// The API version asked for (oslo's dispatcher assumes `1.0` when absent).
    pub version: String,
    /// The endpoint namespace (`None` for every L3 topic).
    pub namespace: Option<String>,
    /// `_unique_id`: duplicate detection.
    pub unique_id: Option<String>,
    /// The request context, keys without their `_context_` prefix.
    pub context: Map<String, Value>,
    /// Set for a call.
    pub call: Option<CallHeader>,
}

impl Request {
    /// A cast of `method` at `version` with `args` (no context, a fresh `_unique_id`).
    pub fn new(method: &str, args: Map<String, Value>, version: &str) -> Request {
        Request {
            method: method.to_owned(),
            args,
            version: version.to_owned(),
            namespace: None,
            unique_id: Some(uuid4_hex()),
            context: Map::new(),
            call: None,
        }
    }

    /// The inner message as oslo builds it.
    pub fn to_inner(&self) -> Value {
        let mut m = Map::new();
        m.insert("method".into(), Value::String(self.method.clone()));
        m.insert("args".into(), Value::Object(self.args.clone()));
        if let Some(ns) = &self.namespace {
            m.insert("namespace".into(), Value::String(ns.clone()));
        }
        m.insert("version".into(), Value::String(self.version.clone()));
        if let Some(call) = &self.call {
            m.insert("_msg_id".into(), Value::String(call.msg_id.clone()));
            m.insert("_reply_q".into(), Value::String(call.reply_q.clone()));
            m.insert("_timeout".into(), call.timeout.clone());
        }
        if let Some(u) = &self.unique_id {
            m.insert("_unique_id".into(), Value::String(u.clone()));
        }
        for (k, v) in &self.context {
            m.insert(format!("_context_{k}"), v.clone());
        }
        Value::Object(m)
    }

    /// The AMQP body: the envelope.
    pub fn to_body(&self) -> Vec<u8> {
        envelope(&self.to_inner())
    }

    /// Reads an AMQP body (`amqp.py` `unpack_context` + the dispatcher's defaults).
    pub fn from_body(body: &[u8]) -> Result<Request, NeutronError> {
        let mut m = open_envelope(body)?;
        let method = match m.remove("method") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(NeutronError::decode(
                    "RPC request",
                    format!("method is not a string: {}", brief(&other)),
                ))
            }
            None => return Err(NeutronError::decode("RPC request", "no method")),
        };
        let args = match m.remove("args") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a,
            Some(other) => {
                return Err(NeutronError::decode(
                    "RPC request",
                    format!("args is not an object: {}", brief(&other)),
                ))
            }
        };
        let version = match m.remove("version") {
            None | Some(Value::Null) => "1.0".to_owned(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(NeutronError::decode(
                    "RPC request",
                    format!("version is not a string: {}", brief(&other)),
                ))
            }
        };
        let namespace = match m.remove("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(NeutronError::decode(
                    "RPC request",
                    format!("namespace is not a string: {}", brief(&other)),
                ))
            }
        };
        let unique_id = string_field(m.remove("_unique_id"));
        let msg_id = string_field(m.remove("_msg_id"));
        let reply_q = string_field(m.remove("_reply_q"));
        let timeout = m.remove("_timeout").unwrap_or(Value::Null);
        if reply_q.as_ref().is_some_and(|q| q.len() > 255) {
            return Err(NeutronError::decode(
                "RPC request",
                "_reply_q is longer than an AMQP queue name (255 bytes)",
            ));
        }
        let call = match (msg_id, reply_q) {
            (Some(msg_id), Some(reply_q)) => Some(CallHeader {
                msg_id,
                reply_q,
                timeout,
            }),
            (Some(_), None) => {
                return Err(NeutronError::decode(
                    "RPC request",
                    "a call (_msg_id) without _reply_q",
                ))
            }
            _ => None,
        };
        let context = m
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("_context_").map(|k| (k.to_owned(), v)))
            .collect();
        Ok(Request {
            method,
            args,
            version,
            namespace,
            unique_id,
            context,
            call,
        })
    }
}

fn string_field(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A value shortened for an error message.
fn brief(v: &Value) -> String {
    clean_message(&v.to_string(), 120)
}

/// Wraps an inner message in the 2.0 envelope.
pub fn envelope(inner: &Value) -> Vec<u8> {
    let body = json!({
        "oslo.version": ENVELOPE_VERSION,
        "oslo.message": inner.to_string(),
    });
    body.to_string().into_bytes()
}

/// oslo's `deserialize_msg`: the inner message of an envelope, or a bare dict as is.
pub fn open_envelope(body: &[u8]) -> Result<Map<String, Value>, NeutronError> {
    let outer: Value =
        serde_json::from_slice(body).map_err(|e| NeutronError::decode("AMQP body", e))?;
    let Value::Object(mut outer) = outer else {
        return Err(NeutronError::decode(
            "AMQP body",
            "not a JSON object (not an oslo.messaging message)",
        ));
    };
    if !(outer.contains_key("oslo.version") && outer.contains_key("oslo.message")) {
        return Ok(outer);
    }
    let version = match outer.remove("oslo.version") {
        Some(Value::String(v)) => v,
        other => {
            return Err(NeutronError::decode(
                "oslo.messaging envelope",
                format!(
                    "oslo.version is not a string: {}",
                    brief(&other.unwrap_or(Value::Null))
                ),
            ))
        }
    };
    if !version_is_compatible(ENVELOPE_VERSION, &version) {
        return Err(NeutronError::decode(
            "oslo.messaging envelope",
            format!(
                "unsupported envelope version {version:?} (this agent reads {ENVELOPE_VERSION})"
            ),
        ));
    }
    let Some(Value::String(inner)) = outer.remove("oslo.message") else {
        return Err(NeutronError::decode(
            "oslo.messaging envelope",
            "oslo.message is not a string",
        ));
    };
    match serde_json::from_str(&inner) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(NeutronError::decode(
            "oslo.messaging envelope",
            format!("oslo.message is not a JSON object: {}", brief(&other)),
        )),
        Err(e) => Err(NeutronError::decode("oslo.message", e)),
    }
}

/// An exception as oslo.messaging serialises it across RPC (`serialize_remote_exception`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteFailure {
    /// The exception's class name (`NoSuchMethod`).
    pub class: String,
    /// Its Python module (`oslo_messaging.rpc.dispatcher`).
    pub module: String,
    /// `str(exception)`.
    pub message: String,
    /// The formatted traceback lines.
    pub tb: Vec<String>,
    /// `exception.args`.
    pub args: Vec<Value>,
    /// `exception.kwargs` (`{}` when it has none).
    pub kwargs: Map<String, Value>,
}

/// The module of oslo's dispatcher exceptions.
pub const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

impl RemoteFailure {
    /// A failure of `module.class` with `message` (traceback lines as Python prints them).
    pub fn new(module: &str, class: &str, message: &str) -> RemoteFailure {
        RemoteFailure {
            class: class.to_owned(),
            module: module.to_owned(),
            message: message.to_owned(),
            tb: vec![
                "Traceback (most recent call last):\n".to_owned(),
                "  File \"l3agent-neutron\", in dispatch\n".to_owned(),
                format!("{module}.{class}: {message}\n"),
            ],
            args: vec![Value::String(message.to_owned())],
            kwargs: Map::new(),
        }
    }

    /// `NoSuchMethod(method)`: no endpoint method of that name.
    pub fn no_such_method(method: &str) -> RemoteFailure {
        RemoteFailure::new(
            DISPATCHER_MODULE,
            "NoSuchMethod",
            &format!("Endpoint does not support RPC method {method}"),
        )
    }

    /// `UnsupportedVersion(version, method=method)`: no endpoint at a compatible version.
    pub fn unsupported_version(version: &str, method: Option<&str>) -> RemoteFailure {
        let mut msg = format!("Endpoint does not support RPC version {version}");
        if let Some(m) = method {
            msg.push_str(&format!(". Attempted method: {m}"));
        }
        RemoteFailure::new(DISPATCHER_MODULE, "UnsupportedVersion", &msg)
    }

    /// Whether it is `module.class`.
    pub fn is(&self, module: &str, class: &str) -> bool {
        self.module == module && self.class == class
    }

    /// The JSON string that goes into a reply's `failure`.
    pub fn to_json_string(&self) -> String {
        json!({
            "class": self.class,
            "module": self.module,
            "message": self.message,
            "tb": self.tb,
            "args": self.args,
            "kwargs": self.kwargs,
        })
        .to_string()
    }

    /// Reads a reply's `failure` string (missing fields are empty, as oslo's `.get`).
    pub fn from_json_str(s: &str) -> Result<RemoteFailure, NeutronError> {
        let v: Value =
            serde_json::from_str(s).map_err(|e| NeutronError::decode("RPC failure", e))?;
        let Value::Object(m) = v else {
            return Err(NeutronError::decode("RPC failure", "not a JSON object"));
        };
        let text = |k: &str| match m.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        Ok(RemoteFailure {
            class: text("class"),
            module: text("module"),
            message: text("message"),
            tb: match m.get("tb") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_owned))
                    .collect(),
                _ => Vec::new(),
            },
            args: match m.get("args") {
                Some(Value::Array(a)) => a.clone(),
                _ => Vec::new(),
            },
            kwargs: match m.get("kwargs") {
                Some(Value::Object(k)) => k.clone(),
                _ => Map::new(),
            },
        })
    }
}

impl fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}: {}",
            clean_message(&self.module, 120),
            clean_message(&self.class, 120),
            clean_message(&self.message, 400)
        )
    }
}

/// A reply to a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The method's result (`null` for a failure).
    pub result: Value,
    /// The failure, if the method raised.
    pub failure: Option<RemoteFailure>,
    /// `ending`: the last reply message for this call (oslo sends one, with `true`; an
    /// older server sent the result and then an empty ending message; `false` with no result
    /// is a call-monitor heartbeat).
    pub ending: bool,
    /// `_msg_id` of the call it answers.
    pub msg_id: Option<String>,
    /// `_unique_id`: duplicate detection.
    pub unique_id: Option<String>,
}

impl Reply {
    /// A successful final reply to `msg_id`.
    pub fn result(msg_id: &str, result: Value) -> Reply {
        Reply {
            result,
            failure: None,
            ending: true,
            msg_id: Some(msg_id.to_owned()),
            unique_id: Some(uuid4_hex()),
        }
    }

    /// A failed final reply to `msg_id`.
    pub fn failure(msg_id: &str, failure: RemoteFailure) -> Reply {
        Reply {
            result: Value::Null,
            failure: Some(failure),
            ending: true,
            msg_id: Some(msg_id.to_owned()),
            unique_id: Some(uuid4_hex()),
        }
    }

    /// The inner message as `AMQPIncomingMessage._send_reply` builds it.
    pub fn to_inner(&self) -> Value {
        json!({
            "result": self.result,
            "failure": self.failure.as_ref().map(RemoteFailure::to_json_string),
            "ending": self.ending,
            "_msg_id": self.msg_id,
            "_unique_id": self.unique_id,
        })
    }

    /// The AMQP body.
    pub fn to_body(&self) -> Vec<u8> {
        envelope(&self.to_inner())
    }

    /// Reads an AMQP body.
    pub fn from_body(body: &[u8]) -> Result<Reply, NeutronError> {
        let mut m = open_envelope(body)?;
        let failure = match m.remove("failure") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(RemoteFailure::from_json_str(&s)?),
            // Not what oslo sends, but readable.
            Some(v @ Value::Object(_)) => Some(RemoteFailure::from_json_str(&v.to_string())?),
            Some(other) => {
                return Err(NeutronError::decode(
                    "RPC reply",
                    format!("failure is neither null nor a string: {}", brief(&other)),
                ))
            }
        };
        Ok(Reply {
            result: m.remove("result").unwrap_or(Value::Null),
            failure,
            ending: matches!(m.remove("ending"), Some(Value::Bool(true))),
            msg_id: string_field(m.remove("_msg_id")),
            unique_id: string_field(m.remove("_unique_id")),
        })
    }
}

/// oslo's `_MsgIdCache`: the last 16 `_unique_id`s seen by one listener; a message seen
/// again (redelivered after a lost ack) is dropped.
#[derive(Debug, Default)]
pub struct DuplicateFilter {
    recent: std::collections::VecDeque<String>,
}

impl DuplicateFilter {
    /// oslo's `DUP_MSG_CHECK_SIZE`.
    pub const SIZE: usize = 16;

    /// True the first time `unique_id` is seen (and remembers it); false for a duplicate.
    /// Messages without an id are never duplicates.
    pub fn first_time(&mut self, unique_id: Option<&str>) -> bool {
        let Some(id) = unique_id else {
            return true;
        };
        if self.recent.iter().any(|r| r == id) {
            return false;
        }
        if self.recent.len() == Self::SIZE {
            self.recent.pop_front();
        }
        self.recent.push_back(id.to_owned());
        true
    }
}

/// The request context neutron-l3-agent sends: `neutron_lib.context.
/// get_admin_context_without_session().to_dict()`, as neutron-lib 5.0.1 with oslo.context
/// 6.5.0 serialise it (captured from them). `request_id` and `timestamp` are fixed for the
/// agent's life, as the agent builds its context once.
pub fn admin_context(request_id: &str, timestamp: &str) -> Map<String, Value> {
    let v = json!({
        "auth_token": null,
        "can_set_project_id": true,
        "domain": null,
        "global_request_id": null,
        "has_global_access": true,
        "is_admin": true,
        "is_admin_project": true,
        "project": null,
        "project_domain": null,
        "project_id": null,
        "project_name": null,
        "read_only": false,
        "request_id": request_id,
        "resource_uuid": null,
        "roles": ["reader", "admin", "member"],
        "show_deleted": false,
        "system_scope": null,
        "timestamp": timestamp,
        "user": null,
        "user_domain": null,
        "user_id": null,
        "user_identity": "- - - - -",
        "user_name": null,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// UTC civil time of a Unix timestamp: (year, month, day, hour, minute, second).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// `datetime.utcnow().strftime(fmt)` for the two formats Neutron uses: `T` as separator is
/// `%Y-%m-%dT%H:%M:%S.%f` (report_state's `time`), a space is `str(datetime)` (the
/// context's `timestamp`).
pub fn utc_timestamp(t: std::time::SystemTime, separator: char) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs());
    format!(
        "{y:04}-{mo:02}-{da:02}{separator}{h:02}:{mi:02}:{s:02}.{:06}",
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serialize_remote_exception` of `NoSuchMethod('foo')` and `UnsupportedVersion('2.0',
    /// method='foo')`, printed by oslo.messaging 18.3.1 (Python 3.11).
    const GOLDEN_NO_SUCH_METHOD: &str = r#"{"class": "NoSuchMethod", "module": "oslo_messaging.rpc.dispatcher", "message": "Endpoint does not support RPC method foo", "tb": ["Traceback (most recent call last):\n", "  File \"<stdin>\", line 6, in <module>\n", "oslo_messaging.rpc.dispatcher.NoSuchMethod: Endpoint does not support RPC method foo\n"], "args": ["Endpoint does not support RPC method foo"], "kwargs": {}}"#;
    const GOLDEN_UNSUPPORTED: &str = r#"{"class": "UnsupportedVersion", "module": "oslo_messaging.rpc.dispatcher", "message": "Endpoint does not support RPC version 2.0. Attempted method: foo", "tb": ["Traceback (most recent call last):\n", "  File \"<stdin>\", line 6, in <module>\n", "oslo_messaging.rpc.dispatcher.UnsupportedVersion: Endpoint does not support RPC version 2.0. Attempted method: foo\n"], "args": ["Endpoint does not support RPC version 2.0. Attempted method: foo"], "kwargs": {}}"#;

    fn without_tb(s: &str) -> Value {
        let mut v: Value = serde_json::from_str(s).unwrap();
        let tb = v.as_object_mut().unwrap().remove("tb").unwrap();
        let last = tb.as_array().unwrap().last().unwrap().clone();
        v["tb_last"] = last;
        v
    }

    #[test]
    fn dispatcher_failures_match_oslo_golden_json() {
        assert_eq!(
            without_tb(&RemoteFailure::no_such_method("foo").to_json_string()),
            without_tb(GOLDEN_NO_SUCH_METHOD)
        );
        assert_eq!(
            without_tb(&RemoteFailure::unsupported_version("2.0", Some("foo")).to_json_string()),
            without_tb(GOLDEN_UNSUPPORTED)
        );
        let f = RemoteFailure::from_json_str(GOLDEN_NO_SUCH_METHOD).unwrap();
        assert!(f.is(DISPATCHER_MODULE, "NoSuchMethod"));
        assert_eq!(f.tb.len(), 3);
        assert_eq!(
            f.to_string(),
            "oslo_messaging.rpc.dispatcher.NoSuchMethod: Endpoint does not support RPC method foo"
        );
    }

    /// A `get_router_ids` call as neutron-l3-agent's stack puts it on the wire: captured raw
    /// (kombu `Queue.get`) from Neutron 29.0.0's venv (oslo.messaging 18.3.1, neutron-lib
    /// 5.0.1): `get_rpc_client(..., serializer=RequestContextSerializer()).prepare(
    /// version="1.9").call(get_admin_context_without_session(), "get_router_ids",
    /// host="node1")`.
    const GOLDEN_CALL: &str = r#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"get_router_ids\", \"args\": {\"host\": \"node1\"}, \"version\": \"1.9\", \"_msg_id\": \"36b4341ec7624d78a7f6b786f9f38fb2\", \"_reply_q\": \"reply_cf74f153bddc4224b67a1c39fb326da2\", \"_timeout\": null, \"_unique_id\": \"58e18a38f5c54157afdf4cf56b59e81a\", \"_context_user\": null, \"_context_project_id\": null, \"_context_system_scope\": null, \"_context_project\": null, \"_context_domain\": null, \"_context_user_domain\": null, \"_context_project_domain\": null, \"_context_is_admin\": true, \"_context_read_only\": false, \"_context_show_deleted\": false, \"_context_auth_token\": null, \"_context_request_id\": \"req-10f6f0ba-7cd9-4fa9-8fc1-7dc5d5e50e85\", \"_context_global_request_id\": null, \"_context_resource_uuid\": null, \"_context_roles\": [\"member\", \"admin\", \"reader\"], \"_context_user_identity\": \"- - - - -\", \"_context_is_admin_project\": true, \"_context_user_id\": null, \"_context_timestamp\": \"2026-12-02 01:32:32.637814\", \"_context_project_name\": null, \"_context_user_name\": null, \"_context_has_global_access\": true, \"_context_can_set_project_id\": true}"}"#;

    #[test]
    fn reads_a_golden_call_and_writes_it_back_equal() {
        let r = Request::from_body(GOLDEN_CALL.as_bytes()).unwrap();
        assert_eq!(r.method, "get_router_ids");
        assert_eq!(r.args["host"], "node1");
        assert_eq!(r.version, "1.9");
        assert_eq!(r.namespace, None);
        assert_eq!(
            r.unique_id.as_deref(),
            Some("58e18a38f5c54157afdf4cf56b59e81a")
        );
        assert_eq!(r.context["is_admin"], true);
        assert_eq!(r.context["roles"], json!(["member", "admin", "reader"]));
        let call = r.call.as_ref().unwrap();
        assert_eq!(call.msg_id, "36b4341ec7624d78a7f6b786f9f38fb2");
        assert_eq!(call.reply_q, "reply_cf74f153bddc4224b67a1c39fb326da2");
        assert_eq!(call.timeout, Value::Null);
        // Same inner message, key for key.
        let ours: Value = serde_json::from_slice(&r.to_body()).unwrap();
        let theirs: Value = serde_json::from_str(GOLDEN_CALL).unwrap();
        assert_eq!(ours["oslo.version"], "2.0");
        let inner = |v: &Value| -> Value {
            serde_json::from_str(v["oslo.message"].as_str().unwrap()).unwrap()
        };
        assert_eq!(inner(&ours), inner(&theirs));
        // Our admin context has exactly the keys neutron-l3-agent sends.
        let ctx = admin_context("req-x", "t");
        let ours: Vec<&String> = ctx.keys().collect();
        let theirs: Vec<&String> = r.context.keys().collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_cast_has_no_call_fields_and_no_null_namespace() {
        let mut args = Map::new();
        args.insert("router_id".into(), json!("r1"));
        let r = Request::new("router_deleted", args, "1.0");
        let inner = r.to_inner();
        let keys: Vec<&String> = inner.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["_unique_id", "args", "method", "version"]);
        assert_eq!(Request::from_body(&r.to_body()).unwrap(), r);
    }

    #[test]
    fn replies_round_trip_and_read_oslo_replies() {
        // A reply as oslo.messaging 18.3.1 sends it.
        let golden = r#"{"oslo.version": "2.0", "oslo.message": "{\"result\": [\"r1\"], \"failure\": null, \"ending\": true, \"_msg_id\": \"m1\", \"_unique_id\": \"u1\"}"}"#;
        let r = Reply::from_body(golden.as_bytes()).unwrap();
        assert_eq!(r.result, json!(["r1"]));
        assert!(r.ending && r.failure.is_none());
        assert_eq!(
            (r.msg_id.as_deref(), r.unique_id.as_deref()),
            (Some("m1"), Some("u1"))
        );
        let f = Reply::failure("m2", RemoteFailure::no_such_method("x"));
        let back = Reply::from_body(&f.to_body()).unwrap();
        assert_eq!(back, f);
        // The failure is a JSON string inside the inner message, not an object.
        let inner: Value = serde_json::from_str(
            serde_json::from_slice::<Value>(&f.to_body()).unwrap()["oslo.message"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(inner["failure"].is_string());
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"{\"oslo.version\": \"3.0\", \"oslo.message\": \"{}\"}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"[]\"}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": 5}",
            b"{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"args\\\": {}}\"}",
            b"{\"method\": 5}",
            b"{\"method\": \"m\", \"args\": []}",
            b"{\"method\": \"m\", \"_msg_id\": \"x\"}",
            format!(
                "{{\"method\": \"m\", \"_msg_id\": \"x\", \"_reply_q\": \"{}\"}}",
                "q".repeat(256)
            )
            .as_bytes(),
        ] {
            assert!(
                Request::from_body(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A bare dict is a pre-envelope message: read as is, version 1.0.
        let r = Request::from_body(br#"{"method": "m"}"#).unwrap();
        assert_eq!((r.method.as_str(), r.version.as_str()), ("m", "1.0"));
    }

    #[test]
    fn versions_are_compatible_as_oslo_says() {
        for (imp, req, ok) in [
            ("1.4", "1.0", true),
            ("1.4", "1.4", true),
            ("1.4", "1.5", false),
            ("1.4", "2.0", false),
            ("2.0", "1.9", false),
            ("1.4", "1.4.1", false),
            ("1.4.2", "1.4.1", true),
            ("1.4", "x", false),
            ("1.13", "1.9", true),
        ] {
            assert_eq!(version_is_compatible(imp, req), ok, "{imp} {req}");
        }
    }

    #[test]
    fn duplicates_are_remembered_for_the_last_sixteen() {
        let mut f = DuplicateFilter::default();
        assert!(f.first_time(Some("a")));
        assert!(!f.first_time(Some("a")));
        assert!(f.first_time(None) && f.first_time(None));
        for i in 0..16 {
            assert!(f.first_time(Some(&i.to_string())));
        }
        assert!(f.first_time(Some("a")), "forgotten after 16 others");
    }

    #[test]
    fn uuids_look_like_pythons() {
        let h = uuid4_hex();
        assert_eq!(h.len(), 32);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(&h[12..13], "4");
        assert_ne!(uuid4_hex(), h);
        let u = uuid4();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_767_225_600_123_456);
        assert_eq!(utc_timestamp(t, 'T'), "2026-01-01T00:00:00.123456");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_827_696);
        assert_eq!(utc_timestamp(t, ' '), "2000-02-29 12:34:56.000000");
    }
}
