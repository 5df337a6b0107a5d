//! Roost: a homeserver for end-to-end encrypted messaging built on MLS (RFC 9420), over QUIC.
//!
//! The crate is one library and three thin binaries: `src/bin/roost/` (the server and the
//! operator's commands), `src/bin/roost-client/` (the command-line client, one file per
//! subcommand) and `src/bin/roost-bench/` (the benchmark). Data flows one way through the
//! library's layers, and back as a response:
//!
//! - [`protocol`]: the wire types, their encoding, error codes and limits. Pure: no I/O.
//! - [`transport`]: the QUIC endpoint, TLS, connections and streams, channel-bound
//!   authentication and the push stream. Knows nothing of accounts or groups; it answers every
//!   failed request with the wire error that `services::wire_error` makes of its
//!   [`services::ServiceError`] (the one place wire errors are made; a federation batch's
//!   refusal goes through it too).
//! - [`services`]: what the server does for an authenticated request; each service owns its rules.
//! - [`store`]: the database, on one of two backends: redb in the data directory, or a PostgreSQL
//!   database several nodes of a domain share; one group-commit writer per node. The only module
//!   that names redb or PostgreSQL; their errors do not leave it.
//! - [`client`]: the client library used by `roost-client`, the tests and the benchmarks.
//!
//! [`server`] wires the layers together; [`tls`] holds certificates and rustls configurations for
//! both sides; [`config`] is the validated server configuration; [`identity`] holds user ids and
//! client credentials (issued by the server, verified by clients); [`clock`] is the time services
//! see, settable in tests; [`rate_limit`] the keyed rate limiters both the transport (per source,
//! per client) and the services (per claimer, per target) use; [`metrics`] the Prometheus
//! endpoint; [`admin`] the operator's side of the admin socket.
//!
//! `ARCHITECTURE.md` at the repository root is the map; `protocol-spec/` is the wire contract.

pub mod admin;
pub mod client;
pub mod clock;
pub mod config;
pub mod escape;
pub mod identity;
pub mod metrics;
pub mod protocol;
pub mod rate_limit;
pub mod secret_files;
pub mod server;
pub mod services;
pub mod store;
pub mod tls;
pub mod transparency;
pub mod transport;
pub mod web_push;
