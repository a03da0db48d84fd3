//! The `CNSPR_*` environment a handler gets on top of the daemon's own (docs/handlers.md).
//!
//! | variable | message | peer event | daemon event |
//! |---|---|---|---|
//! | `CNSPR_EVENT`, `CNSPR_TAG`, `CNSPR_SELF_NAME`, `CNSPR_SELF_ID` | yes | yes | yes |
//! | `CNSPR_FROM`, `CNSPR_FROM_ID`, `CNSPR_MESSAGE_ID` | yes | unset | unset |
//! | `CNSPR_PEER`, `CNSPR_PEER_ID`, `CNSPR_PEER_STATE`, `CNSPR_PEER_ADDRESS`, `CNSPR_PEER_PATH`, `CNSPR_PEER_VIA` | unset | yes | unset |
//! | `CNSPR_DAEMON_STATE` | unset | unset | yes |
//!
//! "Unset" is enforced: the runner removes every variable of [`HANDLER_VARS`]
//! inherited from the daemon's environment before applying the invocation's.

use super::event::{EventKind, Origin};

/// Every variable the runner owns; inherited values of these are removed.
pub const HANDLER_VARS: [&str; 14] = [
    "CNSPR_EVENT",
    "CNSPR_TAG",
    "CNSPR_FROM",
    "CNSPR_FROM_ID",
    "CNSPR_MESSAGE_ID",
    "CNSPR_SELF_NAME",
    "CNSPR_SELF_ID",
    "CNSPR_PEER",
    "CNSPR_PEER_ID",
    "CNSPR_PEER_STATE",
    "CNSPR_PEER_ADDRESS",
    "CNSPR_PEER_PATH",
    "CNSPR_PEER_VIA",
    "CNSPR_DAEMON_STATE",
];

fn var(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

/// A device ID in its one printed form, grouped by 4 with `-` as every JSON output and
/// `cnspr id` print it (the daemon's handler filters match the plain form; scripts
/// compare what they are given with what the CLI prints).
fn id_var(name: &str, id: &str) -> (String, String) {
    if id.contains('-') || id.is_empty() {
        return var(name, id);
    }
    let grouped: Vec<&str> = id
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    var(name, &grouped.join("-"))
}

fn common(kind: EventKind, tag: &str, self_name: &str, self_id: &str) -> Vec<(String, String)> {
    vec![
        var("CNSPR_EVENT", kind.as_str()),
        var("CNSPR_TAG", tag),
        var("CNSPR_SELF_NAME", self_name),
        id_var("CNSPR_SELF_ID", self_id),
    ]
}

/// Environment for a user message from `from`.
pub fn message_env(
    self_name: &str,
    self_id: &str,
    tag: &str,
    from: &Origin<'_>,
    message_id: &str,
) -> Vec<(String, String)> {
    let mut env = common(EventKind::Message, tag, self_name, self_id);
    env.extend([
        var("CNSPR_FROM", from.name),
        id_var("CNSPR_FROM_ID", from.id),
        var("CNSPR_MESSAGE_ID", message_id),
    ]);
    env
}

/// Environment for a peer event about `peer`, which is now in `state`
/// (`active`, `suspect`, ...) at `address` (`HOST:PORT`, empty when unknown).
pub fn peer_env(
    self_name: &str,
    self_id: &str,
    tag: &str,
    peer: &Origin<'_>,
    state: &str,
    address: &str,
    path: Option<&crate::api::PathInfo>,
) -> Vec<(String, String)> {
    let mut env = common(EventKind::Peer, tag, self_name, self_id);
    env.extend([
        var("CNSPR_PEER", peer.name),
        id_var("CNSPR_PEER_ID", peer.id),
        var("CNSPR_PEER_STATE", state),
        var("CNSPR_PEER_ADDRESS", address),
        var("CNSPR_PEER_PATH", path.map_or("", |p| p.kind.as_str())),
        var(
            "CNSPR_PEER_VIA",
            path.and_then(|p| p.via.as_deref()).unwrap_or(""),
        ),
    ]);
    env
}

/// Environment for a daemon event; `state` is the event's last segment
/// (`start`, `stop`, `active`, `inactive`).
pub fn daemon_env(self_name: &str, self_id: &str, tag: &str, state: &str) -> Vec<(String, String)> {
    let mut env = common(EventKind::Daemon, tag, self_name, self_id);
    env.push(var("CNSPR_DAEMON_STATE", state));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &[(String, String)]) -> Vec<&str> {
        env.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn every_variable_is_owned() {
        let o = Origin {
            name: "p",
            id: "ID",
            name_unique: true,
        };
        let all = [
            message_env("me", "MYID", "a.b", &o, "m1"),
            peer_env(
                "me",
                "MYID",
                "peer.path_changed",
                &o,
                "indirect",
                "10.0.0.2:7373",
                Some(&crate::api::PathInfo {
                    kind: "member".into(),
                    via: Some("desk".into()),
                    since: 1,
                }),
            ),
            daemon_env("me", "MYID", "daemon.start", "start"),
        ];
        for env in &all {
            for name in names(env) {
                assert!(HANDLER_VARS.contains(&name), "{name}");
            }
        }
        let msg = &all[0];
        assert!(msg.contains(&var("CNSPR_EVENT", "message")));
        assert!(msg.contains(&var("CNSPR_FROM_ID", "ID")));
        assert!(msg.contains(&var("CNSPR_MESSAGE_ID", "m1")));
        assert!(!names(&all[1]).contains(&"CNSPR_FROM"));
        assert!(all[1].contains(&var("CNSPR_PEER_ADDRESS", "10.0.0.2:7373")));
        assert!(all[1].contains(&var("CNSPR_PEER_PATH", "member")));
        assert!(all[1].contains(&var("CNSPR_PEER_VIA", "desk")));
        assert!(all[2].contains(&var("CNSPR_DAEMON_STATE", "start")));
        assert!(all[2].contains(&var("CNSPR_SELF_ID", "MYID")));
        // One form everywhere: the grouped one that `cnspr id` and JSON print.
        let plain = "FCTKDOUO2ZUJ2TXHN33HWWCGIBQTYH5MY6YV6PLQHXG5RMTTFOZQ";
        let grouped = "FCTK-DOUO-2ZUJ-2TXH-N33H-WWCG-IBQT-YH5M-Y6YV-6PLQ-HXG5-RMTT-FOZQ";
        assert_eq!(id_var("X", plain).1, grouped);
        assert_eq!(id_var("X", grouped).1, grouped);
    }
}
