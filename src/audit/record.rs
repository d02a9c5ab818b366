//! [`AuditRecord`]: what one audit line says, and how a line is hashed.

use serde::{Deserialize, Serialize};

/// The `prev` of the first line of a log: no line came before it.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `rpc` of the marker line a sink writes when it resumes after missing
/// lines; the only line whose `seq` may jump.
pub const RESYNC_RPC: &str = "audit.resync";

/// How an audited action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action succeeded (`OK`).
    Ok,
    /// The caller was not authenticated or lacks the grant.
    Denied,
    /// The request broke a rule (bad argument, unknown ring, precondition).
    Invalid,
    /// The service failed (unavailable, internal, data loss, ...).
    Error,
    /// Written before a mutating action runs (its code is `INTENT`): the
    /// action happens only once this record is durable, and its outcome
    /// record follows with the same request id.
    Intent,
}

impl Outcome {
    /// The outcome a gRPC status code stands for: `OK` is `ok`;
    /// `UNAUTHENTICATED` and `PERMISSION_DENIED` are `denied`;
    /// `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
    /// `FAILED_PRECONDITION` and `OUT_OF_RANGE` are `invalid`; every other
    /// code (and an unknown number) is `error`.
    pub fn from_code(code: i32) -> Self {
        match code {
            0 => Self::Ok,
            7 | 16 => Self::Denied,
            3 | 5 | 6 | 9 | 11 => Self::Invalid,
            _ => Self::Error,
        }
    }
}

/// The canonical name of a gRPC status code number (`tonic::Code as i32`),
/// e.g. `3` is `INVALID_ARGUMENT`; numbers outside the spec are `UNKNOWN`.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// One audit line: an RPC (allowed, denied or failed) or a scheduler action.
///
/// The caller fills in what happened; [`AuditLog`](super::AuditLog) fills in
/// `time`, `seq` and `prev` (whatever the caller put there is replaced).
/// Fields serialize in declaration order; optional fields are omitted when
/// `None`. There is deliberately no field for a private key, a token, a
/// signature or raw claims: sensitive values go in as HMAC digests made with
/// the [`AuditKey`](super::AuditKey).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AuditRecord {
    /// When the line was sequenced: RFC 3339 UTC with milliseconds, e.g.
    /// `2026-01-02T03:04:05.678Z`. Set by the log.
    #[serde(default)]
    pub time: String,
    /// Position in the log: strictly increasing, by one except at an
    /// [`RESYNC_RPC`] marker. Set by the log.
    #[serde(default)]
    pub seq: u64,
    /// The request id (from the caller's metadata or generated).
    pub request_id: String,
    /// The peer's authenticated identity (certificate SAN or CN); empty when
    /// there is none (plaintext dev mode, the scheduler).
    pub peer: String,
    /// The peer's socket address; empty for the scheduler.
    pub peer_addr: String,
    /// What was called: `signet.v1.Signer/Sign`, ..., or `scheduler`.
    pub rpc: String,
    /// The key ring acted on; empty when the action has none (Status).
    pub ring: String,
    /// The key used or affected; empty when none.
    pub kid: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The gRPC status code name, e.g. `OK`, `INVALID_ARGUMENT` (see
    /// [`code_name`]).
    pub code: String,
    /// The reason an administrator gave (Rotate immediate, RevokeKey, Seal),
    /// or what a scheduler or resync line did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `exp` of the issued token (NumericDate seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// `jti` of the issued token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Hex HMAC-SHA256 of the claims as received, under the audit key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_hmac: Option<String>,
    /// Hex HMAC-SHA256 of the `sub` claim, under the audit key, so an
    /// auditor holding the key can find one subject's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_hmac: Option<String>,
    /// Hex SHA-256 of the previous line of this sink ([`line_hash`]), or
    /// [`GENESIS_PREV`] for the first line of a log. Set by the log.
    #[serde(default)]
    pub prev: String,
    /// Signed records only (checkpoint, resync, gap): the hash of the
    /// previous signed record of this file's chain; empty when the writer
    /// found none. Set by the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_prev: Option<String>,
    /// Signed records only: base64url Ed25519 signature under the audit
    /// signing key over [`signed_bytes`](super::signed_bytes). Set by the
    /// log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl AuditRecord {
    /// A record of `rpc` ending in `outcome` with gRPC code name `code`;
    /// every other field empty or `None`. Set the rest with struct update
    /// syntax: `AuditRecord { ring, ..AuditRecord::new(..) }`.
    pub fn new(rpc: impl Into<String>, outcome: Outcome, code: impl Into<String>) -> Self {
        Self {
            time: String::new(),
            seq: 0,
            request_id: String::new(),
            peer: String::new(),
            peer_addr: String::new(),
            rpc: rpc.into(),
            ring: String::new(),
            kid: String::new(),
            outcome,
            code: code.into(),
            reason: None,
            exp: None,
            jti: None,
            claims_hmac: None,
            sub_hmac: None,
            prev: String::new(),
            checkpoint_prev: None,
            sig: None,
        }
    }

    /// The record as one line: compact JSON and a newline. JSON escapes
    /// every control character inside strings, so the only newline is the
    /// last byte.
    #[cfg(test)]
    pub(crate) fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = Vec::with_capacity(512);
        self.write_line(&self.prev, &mut line)?;
        Ok(line)
    }

    /// Appends the record's line to `out` as [`to_line`](Self::to_line)
    /// would, with `prev` in place of its own: the sink thread writes every
    /// line of a batch this way, straight into one buffer, without copying
    /// the record to set its `prev`.
    pub(crate) fn write_line(
        &self,
        prev: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut *out, &LineView { rec: self, prev })?;
        out.push(b'\n');
        Ok(())
    }
}

impl Serialize for AuditRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        LineView {
            rec: self,
            prev: &self.prev,
        }
        .serialize(s)
    }
}

/// How a record serializes, with `prev` given apart (see
/// [`AuditRecord::write_line`]). Fields in declaration order; `None`
/// omitted. The round-trip tests below pin it to the derived
/// `Deserialize`.
struct LineView<'a> {
    rec: &'a AuditRecord,
    prev: &'a str,
}

impl Serialize for LineView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let r = self.rec;
        let mut st = s.serialize_struct("AuditRecord", 18)?;
        st.serialize_field("time", &r.time)?;
        st.serialize_field("seq", &r.seq)?;
        st.serialize_field("request_id", &r.request_id)?;
        st.serialize_field("peer", &r.peer)?;
        st.serialize_field("peer_addr", &r.peer_addr)?;
        st.serialize_field("rpc", &r.rpc)?;
        st.serialize_field("ring", &r.ring)?;
        st.serialize_field("kid", &r.kid)?;
        st.serialize_field("outcome", &r.outcome)?;
        st.serialize_field("code", &r.code)?;
        optional(&mut st, "reason", &r.reason)?;
        optional(&mut st, "exp", &r.exp)?;
        optional(&mut st, "jti", &r.jti)?;
        optional(&mut st, "claims_hmac", &r.claims_hmac)?;
        optional(&mut st, "sub_hmac", &r.sub_hmac)?;
        st.serialize_field("prev", self.prev)?;
        optional(&mut st, "checkpoint_prev", &r.checkpoint_prev)?;
        optional(&mut st, "sig", &r.sig)?;
        st.end()
    }
}

/// Writes an optional field, or leaves it out when `None`.
fn optional<S: serde::ser::SerializeStruct, T: Serialize>(
    st: &mut S,
    name: &'static str,
    value: &Option<T>,
) -> Result<(), S::Error> {
    match value {
        Some(v) => st.serialize_field(name, v),
        None => st.skip_field(name),
    }
}

/// The hex SHA-256 of one line, `line` including its terminating newline:
/// the value the next line carries as `prev`.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_omits_none_fields_and_keeps_field_order() {
        let rec = AuditRecord {
            seq: 7,
            time: "2026-01-02T03:04:05.678Z".into(),
            ring: "payments".into(),
            prev: GENESIS_PREV.into(),
            ..AuditRecord::new(
                "signet.v1.Signer/Sign",
                Outcome::Denied,
                "PERMISSION_DENIED",
            )
        };
        let line = String::from_utf8(rec.to_line().unwrap()).unwrap();
        assert_eq!(
            line,
            format!(
                "{{\"time\":\"2026-01-02T03:04:05.678Z\",\"seq\":7,\"request_id\":\"\",\
                 \"peer\":\"\",\"peer_addr\":\"\",\"rpc\":\"signet.v1.Signer/Sign\",\
                 \"ring\":\"payments\",\"kid\":\"\",\"outcome\":\"denied\",\
                 \"code\":\"PERMISSION_DENIED\",\"prev\":\"{GENESIS_PREV}\"}}\n"
            )
        );
        let back: AuditRecord = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn newlines_inside_values_stay_on_one_line() {
        let rec = AuditRecord {
            reason: Some("two\nlines\r\u{2028}".into()),
            exp: Some(1_700_000_000),
            jti: Some("j".into()),
            ..AuditRecord::new("x", Outcome::Ok, "OK")
        };
        let line = rec.to_line().unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains("\"exp\":1700000000"), "{text}");
        assert!(!text.contains("claims_hmac"), "{text}");
    }

    #[test]
    fn every_field_round_trips_and_write_line_sets_prev() {
        let rec = AuditRecord {
            time: "2026-01-02T03:04:05.678Z".into(),
            seq: 9,
            request_id: "r".into(),
            peer: "p".into(),
            peer_addr: "a".into(),
            ring: "g".into(),
            kid: "k".into(),
            reason: Some("why".into()),
            exp: Some(5),
            jti: Some("j".into()),
            claims_hmac: Some("c".into()),
            sub_hmac: Some("s".into()),
            prev: "old".into(),
            checkpoint_prev: Some("cp".into()),
            sig: Some("sig".into()),
            ..AuditRecord::new("x", Outcome::Intent, "INTENT")
        };
        let line = String::from_utf8(rec.to_line().unwrap()).unwrap();
        assert_eq!(
            line,
            "{\"time\":\"2026-01-02T03:04:05.678Z\",\"seq\":9,\"request_id\":\"r\",\
             \"peer\":\"p\",\"peer_addr\":\"a\",\"rpc\":\"x\",\"ring\":\"g\",\"kid\":\"k\",\
             \"outcome\":\"intent\",\"code\":\"INTENT\",\"reason\":\"why\",\"exp\":5,\
             \"jti\":\"j\",\"claims_hmac\":\"c\",\"sub_hmac\":\"s\",\"prev\":\"old\",\
             \"checkpoint_prev\":\"cp\",\"sig\":\"sig\"}\n"
        );
        let back: AuditRecord = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(serde_json::to_string(&rec).unwrap(), line.trim_end());

        let mut out = b"before\n".to_vec();
        rec.write_line("new", &mut out).unwrap();
        let expected = AuditRecord {
            prev: "new".into(),
            ..rec.clone()
        };
        assert_eq!(
            out,
            [&b"before\n"[..], &expected.to_line().unwrap()].concat()
        );
    }

    #[test]
    fn codes_and_outcomes() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(Outcome::from_code(0), Outcome::Ok);
        assert_eq!(Outcome::from_code(7), Outcome::Denied);
        assert_eq!(Outcome::from_code(3), Outcome::Invalid);
        assert_eq!(Outcome::from_code(14), Outcome::Error);
    }

    #[test]
    fn line_hash_is_sha256_hex_of_the_whole_line() {
        // SHA-256("abc\n"), as printed by `printf 'abc\n' | sha256sum`.
        assert_eq!(
            line_hash(b"abc\n"),
            "edeaaff3f1774ad2888673770c6d64097e391bc362d7d6fb34982ddf0efd18cb"
        );
    }
}
