//! `kv.batch`: several puts and deletes written all or nothing (docs/store.md, "Batches").

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::super::framing::err;
use super::kv::{batch_id, condition, store_err, user_key, written_json};
use crate::api::{code, BatchOpRequest, ErrorBody};
use crate::daemon::context::Daemon;
use crate::store::{BatchOp, MAX_BATCH_OPS};

/// The store's operations from the request's, taking `value_len` values from `body` in
/// order.
fn ops_of(reqs: Vec<BatchOpRequest>, body: &Bytes) -> Result<Vec<BatchOp>, ErrorBody> {
    if reqs.is_empty() || reqs.len() > MAX_BATCH_OPS {
        return Err(err(
            code::BAD_REQUEST,
            format!(
                "a batch holds 1 to {MAX_BATCH_OPS} operations, not {}",
                reqs.len()
            ),
        ));
    }
    let mut at = 0usize;
    let mut ops = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let n = i + 1;
        let (key, value, if_version, if_absent) = match r {
            BatchOpRequest::Put {
                key,
                value,
                value_b64,
                value_len,
                if_version,
                if_absent,
            } => {
                let v = match (value, value_b64, value_len) {
                    (Some(s), None, None) => s.into_bytes(),
                    (None, Some(b), None) => {
                        data_encoding::BASE64.decode(b.as_bytes()).map_err(|e| {
                            err(
                                code::BAD_REQUEST,
                                format!("operation {n}: value_b64 is not base64: {e}"),
                            )
                        })?
                    }
                    (None, None, Some(len)) => {
                        let end = at + len as usize;
                        let v = body[at..end].to_vec();
                        at = end;
                        v
                    }
                    _ => {
                        return Err(err(
                            code::BAD_REQUEST,
                            format!(
                                "operation {n}: a put gives one of value, value_b64, value_len"
                            ),
                        ))
                    }
                };
                (key, Some(v), if_version, if_absent)
            }
            BatchOpRequest::Del {
                key,
                if_version,
                if_absent,
            } => (key, None, if_version, if_absent),
        };
        user_key(&key)
            .map_err(|e| err(code::BAD_REQUEST, format!("operation {n}: {}", e.message)))?;
        let cond = condition(if_version, if_absent)
            .map_err(|e| err(e.code, format!("operation {n}: {}", e.message)))?;
        ops.push(BatchOp { key, value, cond });
    }
    Ok(ops)
}

/// Writes the batch; the reply names it and gives each operation's version.
pub async fn batch(
    d: &Arc<Daemon>,
    reqs: Vec<BatchOpRequest>,
    body: Bytes,
) -> Result<Value, ErrorBody> {
    let ops = ops_of(reqs, &body)?;
    let keys: Vec<String> = ops.iter().map(|o| o.key.clone()).collect();
    let result = d.store.batch(ops).await.map_err(store_err)?;
    let ops: Vec<Value> = keys
        .iter()
        .zip(&result.changes)
        .map(|(key, change)| match change {
            Some(c) => written_json(c),
            None => json!({"key": key, "unchanged": true}),
        })
        .collect();
    Ok(json!({
        "batch": result.range.as_ref().map(batch_id),
        "ops": ops,
    }))
}
