//! The socket's commands, one file per group (status, peers, send, handlers, members and
//! pairing, streams, kv, subscribe). [`handle`] answers the commands that take one
//! request and give one reply; the server (`control/mod.rs`) routes the ones that take
//! the connection over (`subscribe`, `listen`, `pair`, `kv.watch`, `connect`, `accept`,
//! `stop`) and the ones with a payload (`send`, `kv.put`, `kv.batch`).

pub mod batch;
pub mod handlers;
pub mod kv;
pub mod members;
pub mod peers;
pub mod relays;
pub mod send;
pub mod status;
pub mod streams;
pub mod subscribe;

use std::sync::Arc;

use serde_json::Value;

use super::framing::err;
use crate::api::{code, ErrorBody, Request};
use crate::daemon::context::Daemon;

/// Answers a one-reply command.
pub async fn handle(d: &Arc<Daemon>, req: Request) -> Result<Value, ErrorBody> {
    let v = match req {
        Request::Status {} => serde_json::to_value(status::status(d)),
        Request::Peers {} => serde_json::to_value(peers::list(d)),
        Request::Ping { peer, timeout_ms } => {
            let id = d.peers().resolve(&peer)?;
            serde_json::to_value(peers::ping(d, id, timeout_ms).await?)
        }
        Request::Handlers {} => serde_json::to_value(handlers::list(d)),
        Request::Trust {
            device,
            name,
            addrs,
            rename,
        } => Ok(members::trust(d, &device, name, &addrs, rename).await?),
        Request::Remove { peer } => Ok(members::remove(d, &peer)?),
        Request::PairJoin {
            code,
            addrs,
            timeout_s,
        } => Ok(members::pair_join(d, &code, &addrs, timeout_s).await?),
        Request::PairNearby {} => serde_json::to_value(crate::daemon::pair::nearby(d)),
        Request::Expose { service, target } => {
            serde_json::to_value(d.streams.expose(&d.paths.state_dir, &service, &target)?)
        }
        Request::Unexpose { service } => {
            d.streams.unexpose(&d.paths.state_dir, &service)?;
            Ok(serde_json::json!({"unexposed": service}))
        }
        Request::Services {} => serde_json::to_value(d.streams.list()),
        Request::RelayAdd { addr, secret } => {
            serde_json::to_value(relays::add(d, addr.trim(), secret.trim())?)
        }
        Request::RelayRemove { addr } => serde_json::to_value(relays::remove(d, addr.trim())?),
        Request::RelayList {} => serde_json::to_value(relays::list(d)),
        Request::Wake { peer, force } => {
            serde_json::to_value(crate::daemon::wake::wake(d, &peer, force).await?)
        }
        Request::StreamStatus { stream, wait_ms } => Ok(streams::status(d, stream, wait_ms).await),
        Request::KvGet { key, all_versions } => Ok(kv::get(d, &key, all_versions)?),
        Request::KvDel {
            key,
            if_version,
            if_absent,
        } => Ok(kv::del(d, &key, kv::condition(if_version, if_absent)?).await?),
        Request::KvIncr { key, by } => Ok(kv::incr(d, &key, by.unwrap_or(1)).await?),
        Request::KvList {
            prefix,
            after,
            limit,
        } => Ok(kv::list(d, &prefix.unwrap_or_default(), after, limit)?),
        Request::Send(_)
        | Request::KvPut { .. }
        | Request::KvBatch { .. }
        | Request::KvWatch { .. }
        | Request::Subscribe { .. }
        | Request::Pair { .. }
        | Request::Stop {}
        | Request::Ui {}
        | Request::Listen { .. }
        | Request::Connect { .. }
        | Request::Accept { .. } => {
            return Err(err(code::INTERNAL, "request routed to the wrong handler"))
        }
    };
    v.map_err(|e| err(code::INTERNAL, e.to_string()))
}
