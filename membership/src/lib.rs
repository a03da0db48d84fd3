//! Membership, failure detection and gossip for cnspr (SPEC section 6) as a plain state
//! machine: inputs and `now` in, outputs out. See `docs/membership.md`.
