//! The pairing handshake as two state machines with no I/O and no clock: each takes the
//! message received and answers with the message to send or the attempt's outcome. The
//! tasks in `serve` and `join` only move these messages over the QUIC stream.
//!
//! SPAKE2 runs with identities A = the joiner's device ID and B = the window's, as each
//! side saw them in the TLS handshake. The confirmation MACs are keyed by the SPAKE2 key
//! and cover the transcript: the TLS exporter secret, both IDs, both nonces and both names.

use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use transport::DeviceId;

use super::error::PairError;
use crate::daemon::roster::RosterSnapshot;
use crate::daemon::wire::PairMsg;

/// Version carried in `Start`.
pub const PAIR_VERSION: u16 = 1;
/// The `Fail` reason of a wrong code (joiners before this version compare it).
pub const WRONG_CODE_REASON: &str = "wrong code";
const LABEL_J: &[u8] = b"joiner confirms";
const LABEL_W: &[u8] = b"window confirms";
/// Longest reason from the other device that is shown.
const MAX_REASON: usize = 300;

/// This device as it introduces itself.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: DeviceId,
    pub name: String,
    /// Port of its main QUIC endpoint (0: none).
    pub port: u16,
}

/// What the TLS session of one attempt established.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// The device ID the other side proved it holds.
    pub peer: DeviceId,
    /// The session's exporter secret (differs on each side of a machine in the middle).
    pub binding: [u8; 32],
}

/// Why a window turns an attempt away before the code is tried (it does not count).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("pairing protocol version {0} is not supported (this device speaks {PAIR_VERSION}); update cnspr")]
    Version(u16),
    #[error("a device cannot pair with itself")]
    Itself,
    #[error("this device was removed from the mesh and cannot join it again (a new identity is needed: move its state directory away)")]
    Removed,
}

fn mac(key: &[u8], label: &[u8], transcript: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    ctx.update(label);
    ctx.update(transcript);
    ctx.sign().as_ref().to_vec()
}

fn mac_ok(key: &[u8], label: &[u8], transcript: &[u8], tag: &[u8]) -> bool {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut msg = label.to_vec();
    msg.extend_from_slice(transcript);
    ring::hmac::verify(&k, &msg, tag).is_ok()
}

struct Transcript<'a> {
    binding: &'a [u8; 32],
    joiner: &'a DeviceId,
    window: &'a DeviceId,
    nonce_j: &'a [u8; 32],
    nonce_w: &'a [u8; 32],
    name_j: &'a str,
    name_w: &'a str,
}

impl Transcript<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut t = b"cnspr pair v1\0".to_vec();
        t.extend_from_slice(self.binding);
        t.extend_from_slice(&self.joiner.0);
        t.extend_from_slice(&self.window.0);
        t.extend_from_slice(self.nonce_j);
        t.extend_from_slice(self.nonce_w);
        for n in [self.name_j, self.name_w] {
            t.extend_from_slice(&(n.len() as u32).to_be_bytes());
            t.extend_from_slice(n.as_bytes());
        }
        t
    }
}

/// The other side's name if it is a valid one, else one made from its ID.
pub fn clean_name(name: &str, id: &DeviceId) -> String {
    if transport::identity::validate_name(name).is_ok() {
        name.to_string()
    } else {
        format!("device-{}", id.short().to_lowercase())
    }
}

/// A reason sent by the other device, fit for one line on a terminal.
fn sanitize(reason: &str) -> String {
    reason
        .chars()
        .take(MAX_REASON)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn kind(m: &PairMsg) -> &'static str {
    match m {
        PairMsg::Start { .. } => "Start",
        PairMsg::Reply { .. } => "Reply",
        PairMsg::Confirm { .. } => "Confirm",
        PairMsg::Welcome { .. } => "Welcome",
        PairMsg::Fail { .. } => "Fail",
        PairMsg::Done => "Done",
    }
}

/// What the joiner learnt from a window that proved it knows the code.
#[derive(Debug)]
pub struct Welcomed {
    pub window: DeviceId,
    /// The window device's name (cleaned).
    pub name: String,
    /// The window device's main port (0: unknown).
    pub port: u16,
    /// This device's name in the mesh (its own unless another member has it).
    pub self_name: String,
    pub roster: RosterSnapshot,
}

#[derive(Debug)]
pub enum JoinerStep {
    /// Send this and wait for the next message.
    Send(PairMsg),
    /// Paired: trust the window and its roster, then send `send` (`Done`).
    Paired { welcomed: Welcomed, send: PairMsg },
}

enum JoinerStage {
    Reply(Spake2<Ed25519Group>),
    Welcome {
        key: Vec<u8>,
        transcript: Vec<u8>,
        name: String,
        port: u16,
    },
    Over,
}

/// The joining device's side.
pub struct Joiner {
    me: Me,
    window: DeviceId,
    binding: [u8; 32],
    nonce: [u8; 32],
    stage: JoinerStage,
}

impl Joiner {
    /// Starts an attempt with the window at the other end of `session`; returns the
    /// `Start` to send.
    pub fn start(
        digits: &str,
        me: Me,
        session: Session,
        window_removed: bool,
        nonce: [u8; 32],
    ) -> Result<(Joiner, PairMsg), PairError> {
        if session.peer == me.id {
            return Err(PairError::OwnWindow);
        }
        if window_removed {
            return Err(PairError::WindowRemoved(session.peer));
        }
        let (spake, spake_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(digits.as_bytes()),
            &SpakeId::new(&me.id.0),
            &SpakeId::new(&session.peer.0),
        );
        let start = PairMsg::Start {
            version: PAIR_VERSION,
            name: me.name.clone(),
            port: me.port,
            nonce,
            spake: spake_a,
        };
        let j = Joiner {
            me,
            window: session.peer,
            binding: session.binding,
            nonce,
            stage: JoinerStage::Reply(spake),
        };
        Ok((j, start))
    }

    /// The next message from the window.
    pub fn handle(&mut self, msg: PairMsg) -> Result<JoinerStep, PairError> {
        match (std::mem::replace(&mut self.stage, JoinerStage::Over), msg) {
            (
                JoinerStage::Reply(spake),
                PairMsg::Reply {
                    name,
                    port,
                    nonce,
                    spake: spake_b,
                },
            ) => {
                let name = clean_name(&name, &self.window);
                let key = spake.finish(&spake_b)?;
                let transcript = Transcript {
                    binding: &self.binding,
                    joiner: &self.me.id,
                    window: &self.window,
                    nonce_j: &self.nonce,
                    nonce_w: &nonce,
                    name_j: &self.me.name,
                    name_w: &name,
                }
                .bytes();
                let confirm = PairMsg::Confirm {
                    mac: mac(&key, LABEL_J, &transcript),
                };
                self.stage = JoinerStage::Welcome {
                    key,
                    transcript,
                    name,
                    port,
                };
                Ok(JoinerStep::Send(confirm))
            }
            // Turned away before the code was tried: the window says why.
            (JoinerStage::Reply(_), PairMsg::Fail { reason }) => Err(PairError::Refused {
                reason: sanitize(&reason),
            }),
            (
                JoinerStage::Welcome {
                    key,
                    transcript,
                    name,
                    port,
                },
                PairMsg::Welcome {
                    mac,
                    mesh_name,
                    roster,
                },
            ) => {
                if !mac_ok(&key, LABEL_W, &transcript, &mac) {
                    return Err(PairError::WindowUnproven);
                }
                let self_name = if transport::identity::validate_name(&mesh_name).is_ok() {
                    mesh_name
                } else {
                    self.me.name.clone()
                };
                Ok(JoinerStep::Paired {
                    welcomed: Welcomed {
                        window: self.window,
                        name,
                        port,
                        self_name,
                        roster,
                    },
                    send: PairMsg::Done,
                })
            }
            // A `Fail` answering `Confirm`: the window did not accept the code, or it
            // closed while this attempt was under way (its code was not tried) and says
            // why. Windows before that sent only the first.
            (JoinerStage::Welcome { .. }, PairMsg::Fail { reason }) => {
                if reason == WRONG_CODE_REASON {
                    Err(PairError::WrongCode)
                } else {
                    Err(PairError::Refused {
                        reason: sanitize(&reason),
                    })
                }
            }
            (stage, other) => Err(PairError::Unexpected {
                expected: match stage {
                    JoinerStage::Reply(_) => "Reply or Fail",
                    JoinerStage::Welcome { .. } => "Welcome or Fail",
                    JoinerStage::Over => "nothing",
                },
                got: kind(&other),
            }),
        }
    }
}

/// A joiner that proved the code: the window makes it a member, then calls
/// [`WindowHandshake::welcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub joiner: DeviceId,
    /// The name it asked for (cleaned).
    pub name: String,
    /// Its main port (0: unknown).
    pub port: u16,
}

#[derive(Debug)]
pub enum WindowStep {
    /// Send this and wait for the next message.
    Send(PairMsg),
    /// Send this `Fail` and end the attempt; it does not count as a wrong code.
    Refuse { send: PairMsg, why: Refusal },
    /// Send this `Fail` and end the attempt: a wrong code.
    WrongCode { send: PairMsg },
    /// The joiner proved the code.
    Admit(Admission),
}

enum WindowStage {
    Start,
    Confirm {
        key: Result<Vec<u8>, spake2::Error>,
        transcript: Vec<u8>,
        name: String,
        port: u16,
    },
    Admitted {
        key: Vec<u8>,
        transcript: Vec<u8>,
    },
    Over,
}

/// The window's side of one attempt.
pub struct WindowHandshake {
    digits: String,
    me: Me,
    session: Session,
    joiner_removed: bool,
    nonce: [u8; 32],
    joiner_name: Option<String>,
    stage: WindowStage,
}

impl WindowHandshake {
    pub fn new(
        digits: &str,
        me: Me,
        session: Session,
        joiner_removed: bool,
        nonce: [u8; 32],
    ) -> Self {
        WindowHandshake {
            digits: digits.to_string(),
            me,
            session,
            joiner_removed,
            nonce,
            joiner_name: None,
            stage: WindowStage::Start,
        }
    }

    /// The name the joiner gave (cleaned), once its `Start` arrived.
    pub fn joiner_name(&self) -> Option<&str> {
        self.joiner_name.as_deref()
    }

    /// Whether the next message is the joiner's confirmation: handling it tries the code
    /// (one of the window's few tries), so the window takes such messages one at a time.
    pub fn tries_code_next(&self) -> bool {
        matches!(self.stage, WindowStage::Confirm { .. })
    }

    /// The next message from the joiner.
    pub fn handle(&mut self, msg: PairMsg) -> Result<WindowStep, PairError> {
        let joiner = self.session.peer;
        match (std::mem::replace(&mut self.stage, WindowStage::Over), msg) {
            (
                WindowStage::Start,
                PairMsg::Start {
                    version,
                    name,
                    port,
                    nonce: nonce_j,
                    spake: spake_a,
                },
            ) => {
                let name = clean_name(&name, &joiner);
                self.joiner_name = Some(name.clone());
                let refusal = if version != PAIR_VERSION {
                    Some(Refusal::Version(version))
                } else if joiner == self.me.id {
                    Some(Refusal::Itself)
                } else if self.joiner_removed {
                    Some(Refusal::Removed)
                } else {
                    None
                };
                if let Some(why) = refusal {
                    let send = PairMsg::Fail {
                        reason: why.to_string(),
                    };
                    return Ok(WindowStep::Refuse { send, why });
                }
                let (spake, spake_b) = Spake2::<Ed25519Group>::start_b(
                    &Password::new(self.digits.as_bytes()),
                    &SpakeId::new(&joiner.0),
                    &SpakeId::new(&self.me.id.0),
                );
                let transcript = Transcript {
                    binding: &self.session.binding,
                    joiner: &joiner,
                    window: &self.me.id,
                    nonce_j: &nonce_j,
                    nonce_w: &self.nonce,
                    name_j: &name,
                    name_w: &self.me.name,
                }
                .bytes();
                self.stage = WindowStage::Confirm {
                    key: spake.finish(&spake_a),
                    transcript,
                    name,
                    port,
                };
                Ok(WindowStep::Send(PairMsg::Reply {
                    name: self.me.name.clone(),
                    port: self.me.port,
                    nonce: self.nonce,
                    spake: spake_b,
                }))
            }
            (
                WindowStage::Confirm {
                    key,
                    transcript,
                    name,
                    port,
                },
                PairMsg::Confirm { mac },
            ) => match key {
                Ok(key) if mac_ok(&key, LABEL_J, &transcript, &mac) => {
                    self.stage = WindowStage::Admitted { key, transcript };
                    Ok(WindowStep::Admit(Admission { joiner, name, port }))
                }
                _ => Ok(WindowStep::WrongCode {
                    send: PairMsg::Fail {
                        reason: WRONG_CODE_REASON.into(),
                    },
                }),
            },
            (stage, other) => Err(PairError::Unexpected {
                expected: match stage {
                    WindowStage::Start => "Start",
                    WindowStage::Confirm { .. } => "Confirm",
                    WindowStage::Admitted { .. } | WindowStage::Over => "nothing",
                },
                got: kind(&other),
            }),
        }
    }

    /// The `Welcome` for an admitted joiner: its name in the mesh and the roster it joins.
    pub fn welcome(
        &mut self,
        mesh_name: String,
        roster: RosterSnapshot,
    ) -> Result<PairMsg, PairError> {
        match std::mem::replace(&mut self.stage, WindowStage::Over) {
            WindowStage::Admitted { key, transcript } => Ok(PairMsg::Welcome {
                mac: mac(&key, LABEL_W, &transcript),
                mesh_name,
                roster,
            }),
            stage => {
                self.stage = stage;
                Err(PairError::Unexpected {
                    expected: "an admitted joiner",
                    got: "Welcome",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
