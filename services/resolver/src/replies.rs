//! Cache-hit replies encoded once per shared answer and TTL second, with only the
//! request's `request_id` written per request: [`EncodedReplies`].
//!
//! Every cache hit used to serialize the whole answer (a dozen fields and the
//! `metadata` map, walked as `serde_json` values), 2.8 % of the resolver's samples
//! answering hits (docs/benchmarks.md, round 5). Between two hits on one answer
//! only `request_id` changes, and `ttl_seconds` once a second; so the reply is
//! kept as the bytes before the `request_id` value and the bytes after it, and a
//! hit copies those around the encoded id.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use proxybus_shared::codec::EncodeError;
use proxybus_shared::{Codec, Encoding, ProxyResponse, Region, ResponseSource};

use crate::resolver::Answer;

/// Stands for the request id while a reply's halves are found: control
/// characters, which a `request_id` may not hold (`requests::validate`), so the
/// reply has it only where `request_id` is; an answer that also holds it elsewhere
/// (in `metadata`, say) is encoded whole every time instead.
const SENTINEL: &str = "\u{1}proxybus-request-id\u{1}";

/// Slots of the table: answers at once whose replies are kept. A pool hands out a
/// few hundred distinct answers and the resolver stores each once
/// (`cache::SharedAnswers`); a slot taken by another answer is re-encoded.
const SLOTS: usize = 256;

/// The encoded halves of recent cache-hit replies, in a direct-mapped table keyed
/// by the shared answer.
#[derive(Debug)]
pub(crate) struct EncodedReplies {
    slots: Mutex<Vec<Option<Halves>>>,
}

/// One reply with its `request_id` left out.
#[derive(Debug)]
struct Halves {
    /// The answer (held, so its address names it while the slot lives).
    answer: Arc<ProxyResponse>,
    encoding: Encoding,
    source: ResponseSource,
    ttl_seconds: u64,
    resolver_region: Option<Region>,
    /// Bytes up to the `request_id` value.
    before: Bytes,
    /// Bytes after it.
    after: Bytes,
}

impl Halves {
    fn holds(
        &self,
        answer: &Arc<ProxyResponse>,
        encoding: Encoding,
        source: ResponseSource,
        ttl_seconds: u64,
        resolver_region: Option<&Region>,
    ) -> bool {
        Arc::ptr_eq(&self.answer, answer)
            && self.encoding == encoding
            && self.source == source
            && self.ttl_seconds == ttl_seconds
            && self.resolver_region.as_ref() == resolver_region
    }
}

impl Default for EncodedReplies {
    fn default() -> Self {
        Self { slots: Mutex::new(std::iter::repeat_with(|| None).take(SLOTS).collect()) }
    }
}

impl EncodedReplies {
    /// `answer`'s reply body in `encoding`: the same bytes as
    /// [`Answer::encode`], from kept halves for a cached answer.
    ///
    /// # Errors
    /// When the serializer fails (not expected for these types).
    pub(crate) fn encode(&self, codec: &Codec, encoding: Encoding, answer: &Answer) -> Result<Bytes, EncodeError> {
        let Answer::Cached { shared, source, ttl_seconds, request_id, resolver_region } = answer else {
            return answer.encode(codec, encoding);
        };
        let (source, ttl_seconds, resolver_region) = (*source, *ttl_seconds, resolver_region.as_ref());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[slot_of(shared, encoding, ttl_seconds)];
        let fresh =
            slot.as_ref().is_some_and(|kept| kept.holds(shared, encoding, source, ttl_seconds, resolver_region));
        let kept = if fresh {
            slot.as_ref()
        } else {
            split(codec, encoding, shared, source, ttl_seconds, resolver_region)?.map(|(before, after)| {
                &*slot.insert(Halves {
                    answer: shared.clone(),
                    encoding,
                    source,
                    ttl_seconds,
                    resolver_region: resolver_region.cloned(),
                    before,
                    after,
                })
            })
        };
        // No halves: the answer holds the sentinel elsewhere too.
        let Some(kept) = kept else { return answer.encode(codec, encoding) };
        // The id's own bytes: its length prefix (msgpack) or quotes (JSON) and itself.
        let mut body = Vec::with_capacity(kept.before.len() + request_id.len() + 8 + kept.after.len());
        body.extend_from_slice(&kept.before);
        codec.encode_into(encoding, &mut body, request_id)?;
        body.extend_from_slice(&kept.after);
        Ok(body.into())
    }
}

/// The slot of `answer`'s reply in `encoding` with `ttl_seconds`: the answer's
/// address (whose low bits are alignment), the encoding and the TTL mixed. The TTL
/// is in it because the clients sharing one answer got it at different times: at
/// any moment their replies carry a few different TTLs, which would take turns in
/// one slot per answer and be re-encoded every time.
fn slot_of(answer: &Arc<ProxyResponse>, encoding: Encoding, ttl_seconds: u64) -> usize {
    let address = Arc::as_ptr(answer) as u64;
    let mixed = (address >> 4) ^ ttl_seconds.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ encoding as u64;
    usize::try_from(mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56).unwrap_or(0) % SLOTS
}

/// The reply encoded with [`SENTINEL`] as its `request_id`, cut around it:
/// `None` when the sentinel's encoding is not found exactly once.
fn split(
    codec: &Codec,
    encoding: Encoding,
    answer: &ProxyResponse,
    source: ResponseSource,
    ttl_seconds: u64,
    resolver_region: Option<&Region>,
) -> Result<Option<(Bytes, Bytes)>, EncodeError> {
    let whole = codec.encode(encoding, &answer.reply_view(source, ttl_seconds, SENTINEL, resolver_region))?;
    let marker = codec.encode(encoding, &SENTINEL)?;
    let mut found = whole.windows(marker.len()).enumerate().filter(|(_, window)| *window == &marker[..]);
    let (Some((at, _)), None) = (found.next(), found.next()) else { return Ok(None) };
    Ok(Some((whole.slice(..at), whole.slice(at + marker.len()..))))
}

#[cfg(test)]
mod tests {
    use proxybus_shared::FallbackPolicy;

    use super::*;

    fn answer(url: &str, metadata: serde_json::Value) -> Arc<ProxyResponse> {
        Arc::new(ProxyResponse {
            schema_version: 1,
            proxy_url: Some(url.into()),
            proxy_id: Some(proxybus_shared::proxy_id(url)),
            strategy: "p2c_ewma".into(),
            ttl_seconds: 300,
            fallback_policy: FallbackPolicy::DirectConnection,
            source: ResponseSource::Service,
            region: Some("eu-west".parse().unwrap()),
            request_id: String::new(),
            metadata: serde_json::from_value(metadata).unwrap(),
            resolver_region: None,
        })
    }

    fn cached(shared: &Arc<ProxyResponse>, ttl_seconds: u64, request_id: &str, region: Option<&str>) -> Answer {
        Answer::Cached {
            shared: shared.clone(),
            source: ResponseSource::Cache,
            ttl_seconds,
            request_id: request_id.into(),
            resolver_region: region.map(|r| r.parse().unwrap()),
        }
    }

    #[test]
    fn kept_halves_give_the_bytes_of_a_whole_encoding() {
        let codec = Codec::default();
        let replies = EncodedReplies::default();
        let plain = answer("http://10.0.0.1:8080", serde_json::json!({"pool": "a", "weight": 3}));
        // The sentinel inside the answer: found twice, so encoded whole each time.
        let odd = answer("http://10.0.0.2:8080", serde_json::json!({"note": SENTINEL}));
        let long_id = "r".repeat(128);
        let quoted_id = "id with \"quotes\" and \\ and é";
        for encoding in [Encoding::MsgPack, Encoding::Json] {
            for shared in [&plain, &odd] {
                for ttl in [299, 299, 1, 300] {
                    for id in ["a", "0123456789abcdef-42", quoted_id, long_id.as_str()] {
                        for region in [None, Some("us-east")] {
                            let hit = cached(shared, ttl, id, region);
                            let kept = replies.encode(&codec, encoding, &hit).unwrap();
                            assert_eq!(kept, hit.encode(&codec, encoding).unwrap(), "{encoding:?} ttl {ttl} id {id}");
                        }
                    }
                }
            }
        }
        let slots = replies.slots.lock().unwrap();
        assert!(slots.iter().flatten().any(|kept| Arc::ptr_eq(&kept.answer, &plain)), "the plain answer is kept");
        assert!(!slots.iter().flatten().any(|kept| Arc::ptr_eq(&kept.answer, &odd)), "the odd one is not");
    }

    #[test]
    fn a_made_answer_is_encoded_whole() {
        let codec = Codec::default();
        let made = Answer::Made(Arc::unwrap_or_clone(answer("http://10.0.0.3:1", serde_json::json!({}))));
        let replies = EncodedReplies::default();
        assert_eq!(
            replies.encode(&codec, Encoding::MsgPack, &made).unwrap(),
            made.encode(&codec, Encoding::MsgPack).unwrap()
        );
        assert!(replies.slots.lock().unwrap().iter().all(Option::is_none));
    }
}
