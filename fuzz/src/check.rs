//! What every frame target does with its input: read frames the way the daemon reads
//! them, and check what a decoded value must satisfy.

use std::future::Future;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use transport::frame::{decode, encode, read_frame, LEN_BYTES, MAX_FRAME};

/// Runs `f` to completion on one current-thread runtime (the readers never wait: their
/// input is in memory).
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
    .block_on(f)
}

/// Reads frames of `T` from `data` as a stream, with `transport::frame::read_frame` and
/// the stream's limit `max`, until the end, a truncated frame or an error; calls `each`
/// with every value and the length of its payload.
///
/// Checked on the way: the payload is within `max`; the slice decoder
/// (`transport::frame::decode`) agrees with the stream reader on the same bytes; the
/// value re-encodes canonically (see [`canonical`]).
pub fn frames<T: Serialize + DeserializeOwned>(
    data: &[u8],
    max: usize,
    mut each: impl FnMut(T, usize),
) {
    let mut rest = data;
    loop {
        let before = rest;
        let read = block_on(read_frame::<T, _>(&mut rest, max));
        let sliced = decode::<T>(before, max);
        match read {
            Ok(Some(value)) => {
                let used = before.len() - rest.len();
                let payload = used - LEN_BYTES;
                assert!(payload <= max, "payload of {payload} bytes over the limit {max}");
                match sliced {
                    Ok(Some((v2, used2))) => {
                        assert_eq!(used, used2, "stream and slice decoders consumed differently");
                        assert_eq!(
                            encode(&value, MAX_FRAME).unwrap(),
                            encode(&v2, MAX_FRAME).unwrap(),
                            "stream and slice decoders disagree"
                        );
                    }
                    other => panic!(
                        "stream reader decoded a frame the slice decoder did not: {:?}",
                        other.err()
                    ),
                }
                canonical(&value, payload, max);
                each(value, payload);
            }
            Ok(None) | Err(_) => {
                if let Ok(Some(_)) = sliced {
                    panic!("slice decoder decoded a frame the stream reader refused");
                }
                return;
            }
        }
    }
}

/// A decoded value encodes to at most `payload` bytes (bincode's canonical form is the
/// shortest: only over-long varints can be longer), and that encoding decodes, within
/// `max`, to a value with the very same encoding.
pub fn canonical<T: Serialize + DeserializeOwned>(value: &T, payload: usize, max: usize) {
    let once = encode(value, MAX_FRAME).expect("a decoded value encodes");
    assert!(
        once.len() - LEN_BYTES <= payload,
        "re-encoding ({} bytes) is longer than the payload it came from ({payload})",
        once.len() - LEN_BYTES
    );
    let (back, used) = decode::<T>(&once, max)
        .expect("a re-encoded value decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(used, once.len());
    assert_eq!(
        once,
        encode(&back, MAX_FRAME).unwrap(),
        "decode(encode(v)) encodes differently from v"
    );
}

/// Splits the input: the first byte selects what the rest is fed to.
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(s, rest)| (*s, rest))
}
