//! `send --reply` whose message was delivered but whose reply did not come before the
//! timeout: said as such, with its own exit code.

use crate::api::SendOutcome;
use crate::cli::Global;
use crate::client::ApiError;

/// Exit code of `send --reply` when the message was delivered but no reply came in time.
pub const EXIT_NO_REPLY: i32 = 5;

/// Whether `o` failed only for want of a reply (the message was delivered).
pub fn is_late(o: &SendOutcome) -> bool {
    o.error.as_ref().is_some_and(|e| e.delivered == Some(true))
}

/// A failed `send` to one peer: exit [`EXIT_NO_REPLY`] when the message was delivered and
/// only the reply is missing, else the error as it is.
pub fn one(g: &Global, e: anyhow::Error) -> anyhow::Result<i32> {
    let Some(api) = e.downcast_ref::<ApiError>() else {
        return Err(e);
    };
    if api.0.delivered != Some(true) {
        return Err(e);
    }
    if g.json {
        crate::output::print_error_json(&api.0)?;
    }
    eprintln!("cnspr: {}", api.0.message);
    Ok(EXIT_NO_REPLY)
}
