//! A watch answer: one JSON event per line, `{"type": ..., "object": ...}`,
//! until the server's `timeoutSeconds` ends it.

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::{KubeError, Status};

/// Longest event line accepted (one object; the apiserver's own request
/// limit is 3 MiB, so this leaves room for any real object).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event of a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<K> {
    Added(K),
    Modified(K),
    Deleted(K),
    /// A progress marker carrying only a resourceVersion.
    Bookmark,
    /// The watch ended with this status (410 Gone: relist).
    Error(Status),
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// Decodes one event line.
pub fn decode_event<K: DeserializeOwned>(
    call: &str,
    line: &[u8],
) -> Result<WatchEvent<K>, KubeError> {
    let decode = |source| KubeError::Decode {
        call: call.to_string(),
        source,
    };
    let raw: RawEvent = serde_json::from_slice(line).map_err(decode)?;
    let object = || serde_json::from_value::<K>(raw.object.clone()).map_err(decode);
    Ok(match raw.kind.as_str() {
        "ADDED" => WatchEvent::Added(object()?),
        "MODIFIED" => WatchEvent::Modified(object()?),
        "DELETED" => WatchEvent::Deleted(object()?),
        "BOOKMARK" => WatchEvent::Bookmark,
        _ => WatchEvent::Error(serde_json::from_value(raw.object).unwrap_or_default()),
    })
}

/// Splits complete lines off `buf`.
struct Lines {
    buf: BytesMut,
}

impl Lines {
    /// The next complete, non-empty line, if `buf` holds one.
    fn next_line(&mut self) -> Option<Bytes> {
        loop {
            let at = self.buf.iter().position(|b| *b == b'\n')?;
            let line = self.buf.split_to(at).freeze();
            self.buf.advance(1);
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(line);
            }
        }
    }
}

pub(crate) fn watch_stream<K: DeserializeOwned>(
    call: String,
    body: Incoming,
) -> impl Stream<Item = Result<WatchEvent<K>, KubeError>> {
    let state = (
        body,
        Lines {
            buf: BytesMut::new(),
        },
        call,
        false,
    );
    futures::stream::unfold(state, |(mut body, mut lines, call, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(line) = lines.next_line() {
                let ev = decode_event(&call, &line);
                return Some((ev, (body, lines, call, false)));
            }
            if lines.buf.len() > MAX_EVENT_BYTES {
                let err = KubeError::LineTooLong {
                    call: call.clone(),
                    limit: MAX_EVENT_BYTES,
                };
                return Some((Err(err), (body, lines, call, true)));
            }
            match body.frame().await {
                None => return None,
                Some(Err(source)) => {
                    let err = KubeError::Body {
                        call: call.clone(),
                        source: Box::new(source),
                    };
                    return Some((Err(err), (body, lines, call, true)));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        lines.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn lines_split_across_chunks() {
        let mut l = Lines {
            buf: BytesMut::from(&b"{\"a\":1}\n\n{\"b\""[..]),
        };
        assert_eq!(l.next_line().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(l.next_line(), None);
        l.buf.extend_from_slice(b":2}\n");
        assert_eq!(l.next_line().as_deref(), Some(&b"{\"b\":2}"[..]));
    }

    #[test]
    fn events_decode_by_type() {
        let ev: WatchEvent<ConfigMap> = decode_event(
            "GET x",
            br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}}}"#,
        )
        .unwrap();
        assert!(matches!(ev, WatchEvent::Added(cm) if cm.metadata.name.as_deref() == Some("a")));
        let ev: WatchEvent<ConfigMap> = decode_event(
            "GET x",
            br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#,
        )
        .unwrap();
        assert!(matches!(ev, WatchEvent::Error(s) if s.code == 410));
        let ev: WatchEvent<ConfigMap> =
            decode_event("GET x", br#"{"type":"BOOKMARK","object":{}}"#).unwrap();
        assert_eq!(ev, WatchEvent::Bookmark);
        let err = decode_event::<ConfigMap>("GET x", b"not json").unwrap_err();
        assert!(err.to_string().contains("GET x"));
    }
}
