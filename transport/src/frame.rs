//! Length-prefixed bincode frames.
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of bincode
//! (serde, standard configuration). The length is checked against the caller's maximum
//! before anything is allocated, and the bincode decoder carries the same limit, so a
//! frame can never make the receiver allocate more than its maximum.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Hard ceiling for any frame on any stream (a 16 MiB message body plus headers fits).
pub const MAX_FRAME: usize = 32 * 1024 * 1024;
/// Maximum frame on control/gossip streams.
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Typed frame errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("frame encoding failed: {0}")]
    Encode(String),
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as one frame (prefix included).
pub fn encode<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LEN_BYTES];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - LEN_BYTES;
    let max = max.min(MAX_FRAME);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    out[..LEN_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decodes a payload (no prefix) that must be exactly one value.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(payload, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// Reads a length prefix from `buf`, checking it against `max`. `Ok(None)`: need more bytes.
pub fn peek_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < LEN_BYTES {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let max = max.min(MAX_FRAME);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`. `Ok(None)`: the frame is not complete yet.
/// On success returns the value and the number of bytes consumed.
pub fn decode<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = peek_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < LEN_BYTES + len {
        return Ok(None);
    }
    let value = decode_payload(&buf[LEN_BYTES..LEN_BYTES + len])?;
    Ok(Some((value, LEN_BYTES + len)))
}

/// Writes one frame.
pub async fn write_frame<T, W>(w: &mut W, value: &T, max: usize) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(value, max)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the first byte of a frame.
pub async fn read_frame<T, R>(r: &mut R, max: usize) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut prefix = [0u8; LEN_BYTES];
    let mut got = 0;
    while got < LEN_BYTES {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = peek_len(&prefix, max)?.unwrap_or(0);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    decode_payload(&payload).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ControlFrame, Hello};
    use proptest::prelude::*;

    fn sample() -> ControlFrame {
        ControlFrame::Hello(Hello {
            version: 1,
            name: "laptop".into(),
            features: vec!["x".into()],
        })
    }

    #[test]
    fn roundtrip_and_partial_input() {
        let f = sample();
        let bytes = encode(&f, MAX_CONTROL_FRAME).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<ControlFrame>(&bytes[..cut], MAX_CONTROL_FRAME)
                .unwrap()
                .is_none());
        }
        let (back, used) = decode::<ControlFrame>(&bytes, MAX_CONTROL_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back, f);
        assert_eq!(used, bytes.len());
    }

    #[test]
    fn oversized_length_is_refused_before_reading_the_body() {
        let buf = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode::<ControlFrame>(&buf, MAX_CONTROL_FRAME),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
        // An inner collection claiming 2^60 elements inside a tiny frame is malformed,
        // not a giant allocation.
        let mut payload = vec![0u8]; // variant Hello
        payload.push(1); // version
        payload.push(253); // varint u64 marker
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(
            decode::<ControlFrame>(&frame, MAX_CONTROL_FRAME),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn encoder_refuses_frames_over_the_limit() {
        let big = ControlFrame::Hello(Hello {
            version: 1,
            name: "x".repeat(1000),
            features: vec![],
        });
        assert!(matches!(
            encode(&big, 100),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn async_reader_handles_eof_and_truncation() {
        let bytes = encode(&sample(), MAX_CONTROL_FRAME).unwrap();
        let mut r = &bytes[..];
        assert_eq!(
            read_frame::<ControlFrame, _>(&mut r, MAX_CONTROL_FRAME)
                .await
                .unwrap(),
            Some(sample())
        );
        assert_eq!(
            read_frame::<ControlFrame, _>(&mut r, MAX_CONTROL_FRAME)
                .await
                .unwrap(),
            None
        );
        let mut r = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame::<ControlFrame, _>(&mut r, MAX_CONTROL_FRAME).await,
            Err(FrameError::Truncated)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decoder_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ControlFrame>(&bytes, MAX_CONTROL_FRAME);
            let _ = decode_payload::<ControlFrame>(&bytes);
        }

        #[test]
        fn decoder_survives_arbitrary_payloads_with_valid_prefix(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            match decode::<ControlFrame>(&frame, MAX_CONTROL_FRAME) {
                Ok(Some((_, used))) => prop_assert_eq!(used, frame.len()),
                Ok(None) => prop_assert!(false, "complete frame reported as partial"),
                Err(_) => {}
            }
        }

        #[test]
        fn any_encoded_frame_roundtrips(name in "[a-z]{0,40}", version in any::<u16>(), nonce in any::<u64>()) {
            for f in [ControlFrame::Hello(Hello { version, name: name.clone(), features: vec![name.clone()] }), ControlFrame::Ping { nonce }, ControlFrame::Pong { nonce }] {
                let bytes = encode(&f, MAX_CONTROL_FRAME).unwrap();
                let (back, used) = decode::<ControlFrame>(&bytes, MAX_CONTROL_FRAME).unwrap().unwrap();
                prop_assert_eq!(back, f);
                prop_assert_eq!(used, bytes.len());
            }
        }
    }
}
