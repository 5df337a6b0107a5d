//! `transparency`: what the credential log costs. Registrations (a credential and its log entry
//! in one transaction) beside the request floor (`GetServerInfo`) measured in the same run; a
//! bindings proof beside a plain lookup; the size of a proof; a head's publication; and an
//! audit of the whole log. BENCHMARKS.md says what limits each.

use std::time::{Duration, Instant};

use roost::client::audit::Auditor;
use roost::client::Connection;
use tls_codec::Serialize;

use crate::harness::BenchServer;
use crate::report::{percentile_ms, Better, Figure};
use crate::scenarios::Run;

const S: &str = "transparency";
const CIPHERSUITE: u16 = 1;

pub async fn transparency(run: &mut Run<'_>) -> anyhow::Result<()> {
    let Run { report, scale, .. } = run;
    let users = scale.pick(30, 1000);
    let server = BenchServer::start(None).await?;
    let connection = Connection::connect(&server.client_config).await?;

    // The floor: a request that touches no table.
    let mut floor = Vec::with_capacity(users);
    for _ in 0..users {
        let started = Instant::now();
        connection.server_info().await?;
        floor.push(started.elapsed());
    }
    let run_id = format!("{:x}", rand::random::<u32>());
    let mut registering = Vec::with_capacity(users);
    let mut user_ids = Vec::with_capacity(users);
    for n in 0..users {
        let user_id = format!("kt{n}-{run_id}@localhost");
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        // A fresh connection per user: the registration is bound to its channel.
        let fresh = Connection::connect(&server.client_config).await?;
        let started = Instant::now();
        fresh
            .register_user(&user_id, &key, CIPHERSUITE, None)
            .await?;
        registering.push(started.elapsed());
        fresh.close().await;
        user_ids.push(user_id);
    }
    floor.sort();
    registering.sort();
    report.record(
        Figure::ms(
            S,
            "register a user (credential and its log entry, one transaction) p50",
            percentile_ms(&registering, 50),
        )
        .against("GetServerInfo p50", percentile_ms(&floor, 50)),
    );

    // The first proof publishes a head covering every registration; time it alone.
    let me = roost_device(&server, &run_id).await?;
    let started = Instant::now();
    let first = me.prove_bindings(&user_ids[users - 1]).await?;
    let publishing = started.elapsed();
    report.record(Figure::ms(
        S,
        format!("publish a head over {} new entries, then prove", users),
        publishing.as_secs_f64() * 1000.0,
    ));
    let (mut proving, mut looking_up, mut proof_bytes) = (Vec::new(), Vec::new(), Vec::new());
    for user_id in &user_ids {
        let started = Instant::now();
        let proof = me.prove_bindings(user_id).await?;
        proving.push(started.elapsed());
        proof_bytes.push(proof.tls_serialize_detached()?.len());
        let started = Instant::now();
        me.lookup_user(user_id).await?;
        looking_up.push(started.elapsed());
    }
    proving.sort();
    looking_up.sort();
    report.record(
        Figure::ms(S, "ProveBindings p50", percentile_ms(&proving, 50))
            .against("LookupUser p50", percentile_ms(&looking_up, 50)),
    );
    let mean_bytes = proof_bytes.iter().sum::<usize>() as f64 / proof_bytes.len() as f64;
    report.record(Figure::new(
        S,
        format!(
            "a bindings proof at {} entries (head, one device's bindings, map path)",
            first.head.head.tree_size
        ),
        mean_bytes,
        "bytes",
        Better::Lower,
    ));
    let keys = me.domain_keys().await?;
    let started = Instant::now();
    let audited = Auditor::new().step(&me, &keys).await?;
    let audit = started.elapsed().max(Duration::from_micros(1));
    report.record(Figure::new(
        S,
        "audit: log records read, replayed and checked against the head",
        audited.new_records as f64 / audit.as_secs_f64(),
        "records/s",
        Better::Higher,
    ));
    me.close().await;
    connection.close().await;
    server.stop().await;
    Ok(())
}

/// An authenticated connection of a new user on `server`.
async fn roost_device(server: &BenchServer, run_id: &str) -> anyhow::Result<Connection> {
    let connection = Connection::connect(&server.client_config).await?;
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let registered = connection
        .register_user(
            &format!("auditor-{run_id}@localhost"),
            &key,
            CIPHERSUITE,
            None,
        )
        .await?;
    connection
        .authenticate_without_push(&registered.client, &key)
        .await?;
    Ok(connection)
}
