//! `info`: the server's domain, protocol version, limits and credential keys.

use std::net::SocketAddr;

use roost::client::Connection;
use roost::clock::format_utc;
use serde_json::json;

use crate::output::{json_time, Output};

pub async fn run(connection: &Connection, server_addr: SocketAddr) -> anyhow::Result<Output> {
    let info = connection.server_info().await?;
    let limits = info.limits;
    let keys: Vec<_> = info
        .credential_keys
        .iter()
        .map(|key| {
            json!({
                "key_id": key.key_id,
                "public_key": hex::encode(key.public_key.as_slice()),
                // `null` for the key that signs now.
                "valid_until": (key.valid_until != u64::MAX).then(|| json_time(key.valid_until)),
            })
        })
        .collect();
    let json = json!({
        "server": server_addr.to_string(),
        "domain": info.domain.as_str(),
        "protocol_version": info.protocol_version,
        "registration": registration_name(info.registration),
        "credential_keys": keys,
        "limits": {
            "max_request_len": limits.max_request_len,
            "max_response_len": limits.max_response_len,
            "max_notification_len": limits.max_notification_len,
            "max_concurrent_streams": limits.max_concurrent_streams,
            "idle_timeout_ms": limits.idle_timeout_ms,
            "request_timeout_ms": limits.request_timeout_ms,
        },
    });
    let mut text = format!(
        "server:                 {server_addr}\n\
         domain:                 {}\n\
         protocol version:       {}\n\
         registration:           {}\n\
         max request:            {} bytes\n\
         max response:           {} bytes\n\
         max notification:       {} bytes\n\
         max concurrent streams: {}\n\
         idle timeout:           {} ms\n\
         request timeout:        {} ms",
        info.domain,
        info.protocol_version,
        registration_name(info.registration),
        limits.max_request_len,
        limits.max_response_len,
        limits.max_notification_len,
        limits.max_concurrent_streams,
        limits.idle_timeout_ms,
        limits.request_timeout_ms,
    );
    for key in &info.credential_keys {
        let validity = match key.valid_until {
            u64::MAX => "current".to_owned(),
            until => format!("retired, verifies until {}", format_utc(until)),
        };
        text.push_str(&format!(
            "\ncredential key {}:       {} ({validity})",
            key.key_id,
            hex::encode(key.public_key.as_slice()),
        ));
    }
    Ok(Output::new(json, text))
}

fn registration_name(mode: roost::protocol::RegistrationMode) -> &'static str {
    match mode {
        roost::protocol::RegistrationMode::Open => "open",
        roost::protocol::RegistrationMode::Closed => "closed",
        roost::protocol::RegistrationMode::Invite => "invite",
    }
}
