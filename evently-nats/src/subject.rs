//! Subjects: `<prefix>.<aggregate type>.<stream id>`, each token encoded
//! so that any stream id round-trips.
//!
//! A NATS subject token cannot hold `.` (the separator), `*` or `>` (the
//! wildcards) or whitespace, and tools differ on what else they accept. So
//! a token keeps ASCII letters, digits, `-` and `_` as they are and writes
//! every other byte of its UTF-8 form as `%` and two upper-case hex digits
//! (`%` itself becomes `%25`). `account-42` stays `account-42`; `a.b c`
//! becomes `a%2Eb%20c`; `café` becomes `caf%C3%A9`. The encoding is
//! injective, so a subscriber can filter on one stream exactly
//! (`events.account.account-42`) or on an aggregate type
//! (`events.account.>`).

use std::fmt::Write as _;

use evently_core::StreamId;

/// The aggregate-type token of a stream whose id names none (a stream id
/// without a `-`, or starting with one).
pub const NO_AGGREGATE_TYPE: &str = "_";

/// Encodes one subject token. See the module docs.
///
/// ```
/// use evently_nats::subject::{decode_token, encode_token};
/// assert_eq!(encode_token("account-42"), "account-42");
/// assert_eq!(encode_token("a.b *>"), "a%2Eb%20%2A%3E");
/// assert_eq!(decode_token(&encode_token("café %")).unwrap(), "café %");
/// ```
pub fn encode_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(byte as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A subject token that [`encode_token`] did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject token `{token}` is not an encoded stream id: {reason}")]
pub struct TokenError {
    /// The token.
    pub token: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Decodes a token written by [`encode_token`].
pub fn decode_token(token: &str) -> Result<String, TokenError> {
    let error = |reason| TokenError {
        token: token.to_owned(),
        reason,
    };
    let mut bytes = Vec::with_capacity(token.len());
    let mut input = token.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'%' => {
                let hex = [input.next(), input.next()];
                let [Some(high), Some(low)] = hex else {
                    return Err(error("`%` without two hex digits"));
                };
                let digit = |d: u8| (d as char).to_digit(16).filter(|_| !d.is_ascii_lowercase());
                match (digit(high), digit(low)) {
                    (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                    _ => return Err(error("`%` without two upper-case hex digits")),
                }
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => bytes.push(b),
            _ => return Err(error("a character that is always encoded")),
        }
    }
    String::from_utf8(bytes).map_err(|_| error("not UTF-8 once decoded"))
}

/// The subject of a stream's events under `prefix`:
/// `<prefix>.<aggregate type>.<stream id>`, both tokens encoded.
///
/// ```
/// use evently_core::StreamId;
/// use evently_nats::subject::subject_for;
/// assert_eq!(subject_for("bank", &StreamId::from("account-42")), "bank.account.account-42");
/// assert_eq!(subject_for("bank", &StreamId::from("plain")), "bank._.plain");
/// ```
pub fn subject_for(prefix: &str, stream_id: &StreamId) -> String {
    let aggregate_type = stream_id
        .aggregate_type()
        .filter(|t| !t.is_empty())
        .map_or_else(|| NO_AGGREGATE_TYPE.to_owned(), encode_token);
    format!(
        "{prefix}.{aggregate_type}.{}",
        encode_token(stream_id.as_str())
    )
}

/// The stream id a subject written by [`subject_for`] names.
pub fn stream_of(prefix: &str, subject: &str) -> Result<StreamId, TokenError> {
    let error = |reason| TokenError {
        token: subject.to_owned(),
        reason,
    };
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| error("not under the prefix"))?;
    let (_aggregate_type, token) = rest
        .split_once('.')
        .ok_or_else(|| error("no stream id token"))?;
    Ok(StreamId::new(decode_token(token)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_stream_ids_round_trip_through_a_subject() {
        let ids = [
            "account-42",
            "a.b",
            "with space",
            "tab\tand\nnewline",
            "star*",
            "gt>",
            "all.*.>",
            "percent%25",
            "%",
            "café-ünïcode-日本",
            "emoji-🦀",
            "-leading-dash",
            "_",
        ];
        for raw in ids {
            let id = StreamId::from(raw);
            let subject = subject_for("svc.events", &id);
            let tokens: Vec<&str> = subject.split('.').collect();
            assert_eq!(tokens.len(), 4, "{raw:?} gave {subject}");
            for token in &tokens {
                assert!(!token.is_empty());
                assert!(
                    token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'%'),
                    "{raw:?}: token {token:?}"
                );
            }
            assert_eq!(stream_of("svc.events", &subject).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn distinct_ids_get_distinct_tokens() {
        let ids = ["a.b", "a%2Eb", "a_b", "a-b", "A.B"];
        let tokens: std::collections::HashSet<String> =
            ids.iter().map(|i| encode_token(i)).collect();
        assert_eq!(tokens.len(), ids.len());
    }

    #[test]
    fn tokens_not_written_by_the_encoder_are_refused() {
        for bad in ["a.b", "%2", "%zz", "%2e", "a b", "%FF"] {
            let refused = decode_token(bad).unwrap_err();
            assert_eq!(refused.token, bad);
        }
        assert!(stream_of("p", "q.account.x").is_err());
        assert!(stream_of("p", "p.account").is_err());
    }
}
