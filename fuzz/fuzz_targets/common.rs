//! Invariants every decoder target asserts (the same as the property tests of
//! `shared/tests/bad_input/codec.rs`).

use std::fmt::Debug;

use proxybus_shared::codec::DecodeErrorKind;
use proxybus_shared::{Codec, Encoding};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The encoding byte `selector` picks: even MessagePack, odd JSON.
pub fn encoding(selector: u8) -> Encoding {
    if selector % 2 == 0 { Encoding::MsgPack } else { Encoding::Json }
}

/// Decodes `payload` as a `T`: it must not panic; a failure must be a typed
/// `Malformed` error (the payload is under the limit and the encoding is known);
/// a success must re-encode to bytes that decode and re-encode to the same bytes,
/// and a JSON success must cross to MessagePack and back unchanged.
pub fn check<T>(encoding: Encoding, payload: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let codec = Codec::default();
    let decoded = match codec.decode_as::<T>(encoding, payload) {
        Ok(decoded) => decoded,
        Err(err) => {
            assert_eq!(err.kind(), DecodeErrorKind::Malformed, "{err}");
            return;
        }
    };
    let once = codec.encode(encoding, &decoded).expect("a decoded message encodes");
    let again: T = codec
        .decode_as(encoding, &once)
        .unwrap_or_else(|err| panic!("{decoded:?} encoded as {once:?} does not decode: {err}"));
    let twice = codec.encode(encoding, &again).expect("encodes");
    assert_eq!(once, twice, "encoding is not stable for {decoded:?}");
    if encoding == Encoding::Json {
        let packed = codec.encode(Encoding::MsgPack, &decoded).expect("encodes");
        let unpacked: T = codec
            .decode_as(Encoding::MsgPack, &packed)
            .unwrap_or_else(|err| panic!("{decoded:?} as MessagePack does not decode: {err}"));
        assert_eq!(unpacked, decoded, "JSON -> MessagePack changed the message");
    }
}
