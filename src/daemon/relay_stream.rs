//! Relayed application streams: a member joins an App stream from one member to another
//! that it reaches directly, for peers with no link of their own (`indirect`).
//!
//! Wire: the opener sends [`AppFrame::Relay`] (service, final target) to the relay; the
//! relay checks that both ends are members, opens an App stream of its own connection to
//! the target with [`AppFrame::Relayed`] (service, origin = the opener), passes the
//! target's `Ok`/`Err` back unchanged and, after `Ok`, copies both directions between the
//! two QUIC streams. One hop only: a `Relayed` stream is never relayed again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info, warn};
use transport::frame::{read_frame, write_frame};
use transport::identity::ed25519_id;
use transport::quinn::{RecvStream, SendStream};
use transport::{DeviceId, StreamKind};

use super::budget::PEER_RELAYED;
use super::context::Daemon;
use super::errors::StreamError;
use super::origin::{now_ms, verify_stream, Refusal};
use super::services::{validate_service, ACCEPT_WAIT};
use super::stream_io::{app_err, CHUNKS, MAX_APP_FRAME, STREAM_BROKEN};
use super::wire::{AppFrame, OriginProof};
use crate::api::{code, ErrorBody};

/// How long the relay waits for the target's answer (its listener has `ACCEPT_WAIT` to
/// accept); shorter than the opener's own wait, so the opener hears why.
const ANSWER_WAIT: Duration = Duration::from_millis(ACCEPT_WAIT.as_millis() as u64 + 1500);
/// How long opening the onward stream may take (the connection is up already).
const OPEN_WAIT: Duration = Duration::from_secs(5);

fn name_of(d: &Daemon, id: &DeviceId) -> String {
    d.peers().name_of(id).unwrap_or_else(|| id.short())
}

/// A trusted member, not removed.
fn is_member(d: &Daemon, id: &DeviceId) -> bool {
    d.members.is_member(id)
}

/// On the target: a relay (`relay`) says the stream comes from `origin`. Taken only when
/// `origin` is a member here and not this device, and `proof` is the origin's, for this
/// stream to `service` on this device, recent and not seen before (`origin.rs`). A
/// `Relayed` frame without a proof is taken only when it names the relay itself.
pub fn check_origin(
    d: &Daemon,
    relay: DeviceId,
    origin: DeviceId,
    service: &str,
    proof: Option<&OriginProof>,
) -> Result<(), ErrorBody> {
    if origin == d.id() {
        return Err(ErrorBody::new(
            code::BAD_REQUEST,
            "a relayed stream cannot come from the device it goes to",
        ));
    }
    if origin == relay && proof.is_none() {
        return Ok(());
    }
    if !is_member(d, &origin) {
        return Err(ErrorBody::new(
            code::UNKNOWN_PEER,
            format!(
                "{} relayed a stream from {}, which is not a member of the mesh on {}",
                name_of(d, &relay),
                origin.short(),
                d.identity.name
            ),
        ));
    }
    let checked = match proof {
        None => Err(Refusal::Missing),
        Some(p) => {
            let now = now_ms();
            verify_stream(origin, d.id(), service, p, now)
                .and_then(|()| d.origins.admit(origin, p, now))
        }
    };
    checked.map_err(|why| {
        let (relay_name, origin_name) = (name_of(d, &relay), name_of(d, &origin));
        warn!(relay = %relay_name, claimed = %origin_name, %service, reason = %why,
            "bad origin: refused a stream passed on as another member's");
        ErrorBody::new(
            code::BAD_ORIGIN,
            format!(
                "{} refused a stream passed on by {relay_name} as from {origin_name}: {why}",
                d.identity.name
            ),
        )
    })
}

async fn refuse(send: &mut SendStream, e: ErrorBody) {
    let _ = write_frame(send, &app_err(e.code, e.message), MAX_APP_FRAME).await;
    let _ = send.finish();
}

/// On the relay: carries a stream that `from` opened for `service` on `to`, with `from`'s
/// proof passed on unchanged (an opener of an earlier version sends none; the target
/// then refuses the stream, unless it is of an earlier version too).
pub async fn relay(
    d: Arc<Daemon>,
    from: DeviceId,
    to: DeviceId,
    service: String,
    proof: Option<OriginProof>,
    mut send_a: SendStream,
    recv_a: RecvStream,
) {
    let me = d.identity.name.clone();
    let to_name = name_of(&d, &to);
    let checked = (|| {
        validate_service(&service)?;
        if to == d.id() || to == from {
            return Err(ErrorBody::new(
                code::BAD_REQUEST,
                "a stream cannot be relayed back to its relay or its origin",
            ));
        }
        if proof.as_ref().is_some_and(|p| ed25519_id(&p.key) != from) {
            return Err(ErrorBody::new(
                code::BAD_ORIGIN,
                format!("the relay {me} refused a stream whose proof is not its opener's"),
            ));
        }
        for (id, role) in [(from, "origin"), (to, "target")] {
            if !is_member(&d, &id) {
                return Err(ErrorBody::new(
                    code::UNKNOWN_PEER,
                    format!(
                        "the relay {me} does not know the stream's {role} {} as a member",
                        id.short()
                    ),
                ));
            }
        }
        Ok(())
    })();
    if let Err(e) = checked {
        refuse(&mut send_a, e).await;
        return;
    }
    // Held until the stream ends.
    let Some(_turn) = d.budgets.try_relayed(from) else {
        let msg = format!(
            "the relay {me} already carries {PEER_RELAYED} streams from {} (the most it relays for one member at once); retry once one has ended",
            name_of(&d, &from)
        );
        debug!(%service, "relayed stream refused: the opener's streams are at their bound");
        refuse(&mut send_a, ErrorBody::new(code::QUEUE_FULL, msg)).await;
        return;
    };
    let Some(pc) = d.endpoint.connection(&to) else {
        let msg = format!("the relay {me} has no direct link to {to_name} any more");
        refuse(&mut send_a, ErrorBody::new(code::UNREACHABLE, msg)).await;
        return;
    };
    let first = match proof {
        Some(proof) => AppFrame::SignedRelayed {
            service: service.clone(),
            origin: from,
            proof,
        },
        None => AppFrame::Relayed {
            service: service.clone(),
            origin: from,
        },
    };
    let opened = tokio::time::timeout(OPEN_WAIT, async {
        let (mut send, recv) = pc.open(StreamKind::App).await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &first, MAX_APP_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, recv))
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let (mut send_c, mut recv_c) = match opened {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("the relay {me} could not open a stream to {to_name}: {e}");
            refuse(&mut send_a, ErrorBody::new(code::UNREACHABLE, msg)).await;
            return;
        }
    };
    // Wait for the target's answer, unless the opener gives up first.
    let opener_gone = send_a.stopped();
    let answer = tokio::select! {
        r = tokio::time::timeout(ANSWER_WAIT, read_frame::<AppFrame, _>(&mut recv_c, MAX_APP_FRAME)) => r,
        _ = opener_gone => {
            debug!(%service, "the opener left before the target answered a relayed stream");
            let _ = send_c.reset(STREAM_BROKEN.into());
            let _ = recv_c.stop(STREAM_BROKEN.into());
            return;
        }
    };
    let fail = match answer {
        Ok(Ok(Some(AppFrame::Ok))) => None,
        Ok(Ok(Some(AppFrame::Err { code, message }))) => Some(ErrorBody::from_wire(&code, message)),
        Ok(Ok(_)) => Some(ErrorBody::new(
            code::UNREACHABLE,
            format!("{to_name} closed the relayed stream without answering"),
        )),
        Ok(Err(e)) => Some(ErrorBody::new(
            code::UNREACHABLE,
            format!("the relayed stream to {to_name} failed: {e}"),
        )),
        Err(_) => Some(ErrorBody::new(
            code::TIMEOUT,
            format!("{to_name} did not answer the relay {me} in time"),
        )),
    };
    if let Some(e) = fail {
        let _ = send_c.finish();
        refuse(&mut send_a, e).await;
        return;
    }
    if let Err(e) = write_frame(&mut send_a, &AppFrame::Ok, MAX_APP_FRAME).await {
        debug!(error = %e, "the opener of a relayed stream is gone");
        let _ = send_c.reset(STREAM_BROKEN.into());
        let _ = recv_c.stop(STREAM_BROKEN.into());
        return;
    }
    let from_name = name_of(&d, &from);
    info!(%service, from = %from_name, to = %to_name, "relaying a stream");
    match splice_quic(send_a, recv_a, send_c, recv_c).await {
        Ok((up, down)) => debug!(%service, up, down, "relayed stream ended"),
        Err(e) => {
            info!(%service, from = %from_name, to = %to_name, error = %e, "relayed stream broken")
        }
    }
}

/// Copies one direction, the chunks received so far at a time (at most [`CHUNKS`], each
/// one STREAM frame, passed on without a copy): only those are in hand, so the sender is
/// held back by the receiver's flow control, end to end.
async fn pump(recv: &mut RecvStream, send: &mut SendStream) -> Result<u64, StreamError> {
    let mut n = 0u64;
    let mut chunks: [Bytes; CHUNKS] = std::array::from_fn(|_| Bytes::new());
    loop {
        match recv.read_chunks(&mut chunks).await {
            Ok(Some(k)) => {
                n += chunks[..k].iter().map(|c| c.len() as u64).sum::<u64>();
                send.write_all_chunks(&mut chunks[..k]).await?;
            }
            Ok(None) => {
                let _ = send.finish();
                return Ok(n);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Joins the opener's stream (`_a`) and the target's (`_c`) until both directions ended.
/// A FIN is passed on as a half-close. A failure on either side (reset, stop, lost
/// connection) resets and stops all four halves, so both ends see an error at once.
/// Returns the bytes moved (opener to target, target to opener).
pub async fn splice_quic(
    mut send_a: SendStream,
    mut recv_a: RecvStream,
    mut send_c: SendStream,
    mut recv_c: RecvStream,
) -> Result<(u64, u64), StreamError> {
    // A side that stops reading (or whose connection is lost) is noticed even while the
    // direction towards it waits for data from the other side.
    let stop_a = send_a.stopped();
    let stop_c = send_c.stopped();
    let res = {
        let up = pump(&mut recv_a, &mut send_c);
        let down = pump(&mut recv_c, &mut send_a);
        tokio::pin!(up, down, stop_a, stop_c);
        let (mut up_n, mut down_n) = (None, None);
        let (mut a_done, mut c_done) = (false, false);
        loop {
            if let (Some(u), Some(d)) = (up_n, down_n) {
                break Ok((u, d));
            }
            tokio::select! {
                r = &mut up, if up_n.is_none() => match r {
                    Ok(n) => up_n = Some(n),
                    Err(e) => break Err(StreamError::Direction("opener to target", Box::new(e))),
                },
                r = &mut down, if down_n.is_none() => match r {
                    Ok(n) => down_n = Some(n),
                    Err(e) => break Err(StreamError::Direction("target to opener", Box::new(e))),
                },
                r = &mut stop_a, if !a_done => match r {
                    Ok(None) => a_done = true,
                    Ok(Some(c)) => break Err(StreamError::Stopped("opener", c)),
                    Err(e) => break Err(StreamError::Side("opener", e)),
                },
                r = &mut stop_c, if !c_done => match r {
                    Ok(None) => c_done = true,
                    Ok(Some(c)) => break Err(StreamError::Stopped("target", c)),
                    Err(e) => break Err(StreamError::Side("target", e)),
                },
            }
        }
    };
    if res.is_err() {
        for s in [&mut send_a, &mut send_c] {
            let _ = s.reset(STREAM_BROKEN.into());
        }
        for r in [&mut recv_a, &mut recv_c] {
            let _ = r.stop(STREAM_BROKEN.into());
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use transport::frame::{decode, encode};

    #[test]
    fn relay_frames_have_a_fixed_layout() {
        let to = DeviceId([7; 32]);
        let frame = AppFrame::Relay {
            service: "ssh".into(),
            to,
        };
        let f = encode(&frame, MAX_APP_FRAME).unwrap();
        // length 37; variant 3; service: length 3, "ssh"; the ID: 32 bytes, no length.
        let mut want = vec![0, 0, 0, 37, 3, 3, b's', b's', b'h'];
        want.extend_from_slice(&[7; 32]);
        assert_eq!(f, want);
        let (back, used) = decode::<AppFrame>(&f, MAX_APP_FRAME).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert!(matches!(back, AppFrame::Relay { service, to: t } if service == "ssh" && t == to));
        let f = encode(
            &AppFrame::Relayed {
                service: "ssh".into(),
                origin: to,
            },
            MAX_APP_FRAME,
        )
        .unwrap();
        assert_eq!(f[4], 4);
    }

    #[test]
    fn an_older_daemon_refuses_the_new_variants() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        enum OldAppFrame {
            Open { service: String },
            Ok,
            Err { code: String, message: String },
        }
        for frame in [
            AppFrame::Relay {
                service: "x".into(),
                to: DeviceId([1; 32]),
            },
            AppFrame::Relayed {
                service: "x".into(),
                origin: DeviceId([1; 32]),
            },
            AppFrame::SignedRelayed {
                service: "x".into(),
                origin: DeviceId([1; 32]),
                proof: OriginProof {
                    key: [2; 32],
                    time_ms: 1,
                    nonce: 2,
                    sig: vec![3; 64],
                },
            },
        ] {
            let f = encode(&frame, MAX_APP_FRAME).unwrap();
            assert!(decode::<OldAppFrame>(&f, MAX_APP_FRAME).is_err());
        }
    }

    #[test]
    fn bounded_decoding_of_relay_frames() {
        let to = DeviceId([2; 32]);
        // Over the App frame limit: refused before decoding.
        let big = encode(
            &AppFrame::Relay {
                service: "x".repeat(8000),
                to,
            },
            1 << 20,
        )
        .unwrap();
        assert!(decode::<AppFrame>(&big, MAX_APP_FRAME).is_err());
        // Cut short in the device ID: not a whole frame, and a wrong length is an error.
        let f = encode(
            &AppFrame::Relayed {
                service: "svc".into(),
                origin: to,
            },
            MAX_APP_FRAME,
        )
        .unwrap();
        assert!(decode::<AppFrame>(&f[..f.len() - 1], MAX_APP_FRAME)
            .unwrap()
            .is_none());
        let mut short = f[..f.len() - 1].to_vec();
        short[3] -= 1;
        assert!(decode::<AppFrame>(&short, MAX_APP_FRAME).is_err());
    }
}
